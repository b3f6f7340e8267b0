"""Cross-document boilerplate removal: a paragraph (or line) found in more than `max_documents` documents is cut
from every document that holds it, in the manner of CCNet's paragraph hashes and datatrove's line/sentence dedup.

Template text (licence headers, cookie notices, navigation and sign-up blurbs) survives document-level dedup
because each page around it differs. Spans are compared after case folding, whitespace collapsing and mapping
digits to 0 (as CCNet normalises), so "Copyright 2019" and "copyright 2021" match; spans shorter than
`min_chars` (after that normalisation) are never cut. A document left with nothing is excluded
(`boilerplate_dedup:boilerplate_only`).

Stages (each task's work is bounded, so it scales with the corpus like the MinHash step):
  hash (per shard)    the 64-bit hashes of each document's distinct spans, split into one file per bucket
                      (hash % world_size);
  count (per shard)   task r counts bucket r over every shard and writes the hashes seen in too many documents;
  run (per shard)     drops those spans; counters say how many spans, characters and documents it changed.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable, Iterator, Optional

import numpy as np

from data_pipeline.document import Document
from data_pipeline.steps.base import Stage, Step

UNITS = ("paragraph", "line")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_DIGITS = bytes.maketrans(b"123456789", b"000000000")  # on UTF-8: no byte of a multi-byte character is a digit


def span_key(span: str) -> str:
    """The span as compared: case-folded, whitespace collapsed, digits 1-9 made 0."""
    return " ".join(span.casefold().split()).encode("utf-8").translate(_DIGITS).decode("utf-8")


def span_hash(key: str) -> int:
    """64-bit hash of a key whose digits are not yet made 0 (that is done on its UTF-8 bytes: a C-level table
    look-up, where `str.translate` with a dict is a Python-level one per character)."""
    digest = hashlib.blake2b(key.encode("utf-8").translate(_DIGITS), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class BoilerplateDedup(Step):
    name = "boilerplate_dedup"
    resumes_midway = True

    def __init__(self, unit: str = "paragraph", max_documents: int = 10, min_chars: int = 30) -> None:
        super().__init__()
        if unit not in UNITS:
            raise ValueError(f"boilerplate_dedup.unit={unit!r}: use paragraph (blank-line separated) or line")
        if max_documents < 1:
            raise ValueError(f"boilerplate_dedup.max_documents={max_documents}: must be >= 1")
        self.unit = unit
        self.max_documents = max_documents
        self.min_chars = min_chars

    def stages(self) -> list[Stage]:
        return [Stage("hash", self.hash_shard), Stage("count", self.count_bucket), Stage("run", self.run)]

    def spans(self, text: str) -> list[str]:
        return _PARAGRAPH_BREAK.split(text) if self.unit == "paragraph" else text.split("\n")

    def join(self, spans: list[str]) -> str:
        if self.unit == "paragraph":
            return "\n\n".join(spans)
        return re.sub(r"\n{3,}", "\n\n", "\n".join(spans)).strip()

    def hashes(self, text: str, spans: Optional[list[str]] = None) -> list[int]:
        """One hash per span (`spans`: `self.spans(text)` when given), 0 for spans too short to be cut.

        The text is case-folded once, not span by span: case folding maps no character to or from whitespace
        (tests/data_pipeline/test_normalize_boilerplate_speed.py checks every code point), so the folded text
        splits into the folded spans. An ASCII span shorter than `min_chars` cannot fold or collapse to a longer
        key."""
        min_chars = self.min_chars
        if spans is None:
            spans = self.spans(text)
        folded = self.spans(text.casefold()) if not text.isascii() else None
        out = []
        for index, span in enumerate(spans):
            if len(span) < min_chars and span.isascii():
                out.append(0)
                continue
            key = " ".join((span.lower() if folded is None else folded[index]).split())
            out.append(span_hash(key) if len(key) >= min_chars else 0)
        return out

    # ------------------------------------------------------------------ stages
    def hash_shard(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        per_document = [
            np.unique(np.array([h for h in self.hashes(doc.text) if h], dtype=np.uint64)) for doc in documents
        ]
        hashes = np.concatenate(per_document) if per_document else np.zeros(0, dtype=np.uint64)
        buckets = hashes % np.uint64(world_size)
        for bucket in range(world_size):
            self.context.write_atomic(f"hashes-{rank:05d}-{bucket:05d}.npy", _npy_bytes(hashes[buckets == bucket]))

    def count_bucket(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        """Bucket `rank` over every shard; this stage does not read its shard's documents."""
        parts = [np.load(self.context.work_path(f"hashes-{shard:05d}-{rank:05d}.npy")) for shard in range(world_size)]
        values, counts = np.unique(np.concatenate(parts), return_counts=True)
        self.context.write_atomic(f"boilerplate-{rank:05d}.npy", _npy_bytes(values[counts > self.max_documents]))

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        boilerplate = set(
            np.concatenate(
                [np.load(self.context.work_path(f"boilerplate-{b:05d}.npy")) for b in range(world_size)]
            ).tolist()
        )
        for doc in documents:
            spans = self.spans(doc.text)
            hashes = self.hashes(doc.text, spans) if boilerplate else []
            kept = [span for span, h in zip(spans, hashes) if h not in boilerplate] if boilerplate else spans
            if len(kept) == len(spans):
                yield doc
                continue
            removed_chars = sum(len(s) for s in spans) - sum(len(s) for s in kept)
            self.context.count("boilerplate.spans_removed", len(spans) - len(kept))
            self.context.count("boilerplate.chars_removed", removed_chars)
            text = self.join([s for s in kept if s.strip()]).strip()
            if not text:
                self.context.exclude(doc, self.rule("boilerplate_only"), 1.0, 1.0, spans=len(spans))
                continue
            self.context.count("boilerplate.documents_changed")
            yield Document(doc.id, text, doc.metadata)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
