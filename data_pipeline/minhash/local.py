"""Near-dedup of a corpus held in memory, through exactly the staged files the pipeline step uses.

For tests, benchmarks and notebooks: the shards are given as lists, the stages run one after another in this
process, and the result is the same decisions the distributed step would make on the same shards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from data_pipeline.minhash import staged
from data_pipeline.minhash.params import MinHashParams


def deduplicate(
    shards: Sequence[Sequence[tuple[str, str]]],
    params: MinHashParams = MinHashParams(),
    work_dir: Optional[Path] = None,
    batch_size: int = 1000,
    signer: Optional[Callable[[list[str]], np.ndarray]] = None,
) -> dict[str, dict]:
    """Removed document id -> its decision (cluster_id, kept_id, cluster_size, similarity).

    `signer` (texts -> uint32 [n, num_perm]) replaces the built-in MinHasher, e.g. to compare with datasketch.
    """
    with tempfile.TemporaryDirectory(prefix="loom-minhash-") as tmp:
        work = Path(work_dir) if work_dir is not None else Path(tmp)
        signer = signer or params.hasher().signatures
        for shard, docs in enumerate(shards):
            ids = [doc_id for doc_id, _ in docs]
            texts = [text for _, text in docs]
            parts = [signer(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
            sigs = np.concatenate(parts) if parts else np.zeros((0, params.num_perm), dtype=np.uint32)
            staged.write_signatures(work, shard, ids, sigs)
        bands, rows = params.banding
        for band in range(bands):
            staged.find_band_pairs(work, len(shards), band, rows, params.threshold)
        staged.resolve_clusters(work, len(shards), bands)
        removed = {}
        for shard, docs in enumerate(shards):
            for row, info in staged.load_decisions(work, shard).items():
                removed[docs[row][0]] = info
        return removed
