"""Near-duplicate removal with MinHash LSH, staged so it scales past one process's memory.

Stages (the algorithm lives in data_pipeline/minhash; see staged.py there for the files):
  signatures (per shard) -> band_pairs (per shard task, each task owns bands rank, rank + world_size, ...)
  -> clusters (one reduce: union of verified pairs, lowest id kept) -> run (per shard: drop the others).
Each removed document is excluded as `minhash_dedup:near_duplicate` with its cluster id, the kept document's id,
the cluster size and its estimated Jaccard similarity to the kept document.
"""

from __future__ import annotations

import json
from itertools import islice
from typing import Iterable, Iterator, Optional

import numpy as np

from data_pipeline.document import Document
from data_pipeline.minhash import staged
from data_pipeline.minhash.params import MinHashParams
from data_pipeline.steps.base import Stage, Step


class MinHashDedup(Step):
    name = "minhash_dedup"
    drops_only = True
    resumes_midway = True

    def __init__(
        self,
        ngram: int = 5,
        num_perm: int = 128,
        threshold: float = 0.8,
        bands: Optional[int] = None,
        rows: Optional[int] = None,
        false_positive_weight: float = 0.05,
        false_negative_weight: float = 0.95,
        seed: int = 1,
        batch_size: int = 1000,
    ) -> None:
        super().__init__()
        self.params = MinHashParams(
            ngram=ngram,
            num_perm=num_perm,
            threshold=threshold,
            bands=bands,
            rows=rows,
            false_positive_weight=false_positive_weight,
            false_negative_weight=false_negative_weight,
            seed=seed,
        )
        if batch_size < 1:
            raise ValueError(f"minhash_dedup batch_size={batch_size}: must be >= 1")
        self.batch_size = batch_size

    def stages(self) -> list[Stage]:
        return [
            Stage("signatures", self.signatures),
            Stage("band_pairs", self.band_pairs),
            Stage("clusters", self.clusters, per_shard=False),
            Stage("run", self.run),
        ]

    def signatures(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        hasher = self.params.hasher()
        ids: list[str] = []
        parts: list[np.ndarray] = []
        documents = iter(documents)
        while batch := list(islice(documents, self.batch_size)):
            ids.extend(doc.id for doc in batch)
            parts.append(hasher.signatures([doc.text for doc in batch]))
        sigs = np.concatenate(parts) if parts else np.zeros((0, self.params.num_perm), dtype=np.uint32)
        staged.write_signatures(self.context.work_dir, rank, ids, sigs)

    def band_pairs(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        """Band-partitioned work spread over the shard tasks; this stage does not read its shard's documents."""
        bands, rows = self.params.banding
        for band in range(rank, bands, world_size):
            staged.find_band_pairs(self.context.work_dir, world_size, band, rows, self.params.threshold)

    def clusters(self, world_size: int) -> None:
        summary = staged.resolve_clusters(self.context.work_dir, world_size, self.params.banding[0])
        bands, rows = self.params.banding
        summary.update(bands=bands, rows=rows, threshold=self.params.threshold, num_perm=self.params.num_perm)
        self.context.write_atomic("summary.json", json.dumps(summary, indent=2).encode())

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        decisions = staged.load_decisions(self.context.work_dir, rank)
        ids_path = staged.signature_path(self.context.work_dir, rank).with_suffix(".ids.json")
        expected_ids = json.loads(ids_path.read_text())
        for row, doc in enumerate(documents, self.context.position):
            if row >= len(expected_ids) or expected_ids[row] != doc.id:
                raise RuntimeError(
                    f"minhash_dedup shard {rank}: row {row} is {doc.id!r} but signatures were computed for "
                    f"{expected_ids[row] if row < len(expected_ids) else 'no document'!r}; the shard changed "
                    f"between stages: delete {self.context.work_dir} and rerun the step"
                )
            info = decisions.get(row)
            if info is None:
                yield doc
            else:
                self.context.score("minhash_similarity", info["similarity"])
                details = {k: v for k, v in info.items() if k != "similarity"}
                self.context.exclude(
                    doc, self.rule("near_duplicate"), info["similarity"], self.params.threshold, **details
                )
