"""The one record type every step consumes and produces.

Steps never see file formats: readers turn rows into `Document`s and writers turn them back, so an id, the text
and whatever metadata earlier steps attached (scores, source, language) travel together through the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
