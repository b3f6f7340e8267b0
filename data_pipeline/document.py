"""The one record type every step consumes and produces.

Steps never see file formats: readers turn rows into `Document`s and writers turn them back, so an id, the text
and whatever metadata earlier steps attached (scores, source, language) travel together through the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_SIZE_MEMO_ENTRIES = 4  # texts remembered by text_size: one document's passage through a streaming group


@dataclass
class Document:
    """One document. `id` is stable across steps (from the input's id field, or `<file>:<line>` when absent)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """Flat row for JSONL/Parquet: id, text, then metadata keys (which may not shadow id or text)."""
        record = {"id": self.id, "text": self.text}
        for key, value in self.metadata.items():
            if key not in record:
                record[key] = value
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any], text_key: str = "text", id_key: str = "id") -> "Document":
        """Inverse of `to_record`; raises KeyError/TypeError for rows without a string text (callers quarantine)."""
        text = record[text_key]
        if not isinstance(text, str):
            raise TypeError(f"field {text_key!r} is {type(text).__name__}, expected a string")
        metadata = {k: v for k, v in record.items() if k not in (text_key, id_key)}
        return cls(id=str(record[id_key]), text=text, metadata=metadata)


class _TextSizes:
    """UTF-8 bytes and whitespace words of the last few texts, recognised by identity.

    Every step of a streaming group counts the bytes and words of each document it receives, keeps and excludes, so
    without a memo one unchanged text is split and encoded up to four times a step (a second of CPU on 47 MB). A
    text object is remembered only while the memo holds a reference to it, so identity cannot be reused by another
    string."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._sizes: list[tuple[int, int]] = []

    def __call__(self, text: str) -> tuple[int, int]:
        for index, seen in enumerate(self._texts):
            if seen is text:
                return self._sizes[index]
        size = (len(text) if text.isascii() else len(text.encode("utf-8")), len(text.split()))
        self._texts.insert(0, text)
        self._sizes.insert(0, size)
        del self._texts[_SIZE_MEMO_ENTRIES:], self._sizes[_SIZE_MEMO_ENTRIES:]
        return size


text_size = _TextSizes()
"""`text_size(text) -> (utf8_bytes, whitespace_words)`, the counts the steps' stats report."""
