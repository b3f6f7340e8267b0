"""Exact deduplication across all shards: one copy of each text survives, the copy with the lowest id.

Three stages: hash every document of a shard -> one reduce over all hashes picks the keeper of each group ->
each shard drops its non-keepers. The hash is of a canonical form (NFKC, case-folded, whitespace collapsed), so
copies differing only in case or spacing count as duplicates.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import defaultdict
from typing import Iterable, Iterator

from data_pipeline.document import Document
from data_pipeline.steps.base import Stage, Step


def text_hash(text: str) -> str:
    """The digest of the canonical form (NFKC, case-folded, whitespace collapsed); ASCII text is its own NFKC
    form and folds as it lower-cases, so it skips both Unicode passes."""
    if text.isascii():
        canonical = " ".join(text.lower().split())
    else:
        canonical = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


class ExactDedup(Step):
    name = "exact_dedup"
    drops_only = True
    resumes_midway = True

    def stages(self) -> list[Stage]:
        return [Stage("hash", self.hash_shard), Stage("select", self.select, per_shard=False), Stage("run", self.run)]

    def hash_shard(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        rows = [[text_hash(doc.text), doc.id, position] for position, doc in enumerate(documents)]
        self.context.write_atomic(f"hashes-{rank:05d}.json", json.dumps(rows).encode())

    def select(self, world_size: int) -> None:
        groups: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
        for rank in range(world_size):
            for digest, doc_id, position in json.loads(self.context.work_path(f"hashes-{rank:05d}.json").read_text()):
                groups[digest].append((doc_id, rank, position))
        drops: dict[int, dict[int, str]] = defaultdict(dict)
        for members in groups.values():
            if len(members) > 1:
                members.sort()
                keeper = members[0][0]
                for _, rank, position in members[1:]:
                    drops[rank][position] = keeper
        for rank in range(world_size):
            self.context.write_atomic(f"drops-{rank:05d}.json", json.dumps(drops.get(rank, {})).encode())

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        drops = {int(k): v for k, v in json.loads(self.context.work_path(f"drops-{rank:05d}.json").read_text()).items()}
        for position, doc in enumerate(documents, self.context.position):
            if position in drops:
                self.context.exclude(doc, self.rule("duplicate"), 1.0, 1.0, kept=drops[position])
            else:
                yield doc
