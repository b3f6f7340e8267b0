"""MinHash dedup as on-disk stages, so no process ever holds more than one band of the whole corpus.

  1. signatures (per shard):   signatures/shard-RRRRR.npy (uint32 [docs, num_perm]) + .ids.json
  2. band pairs (per band):    pairs/band-BBBB.npy, verified duplicate pairs as global positions; a task holds one
                               band's keys (8 bytes per document) and memory-maps the signature files
  3. clusters (one reduce):    decisions/shard-RRRRR.json, for each removed row: cluster id, kept id, size,
                               estimated similarity to the kept document; needs one int per document
  4. filter (per shard):       the step drops the rows listed in its shard's decisions
Global positions (shard order, then row) are only an internal address: ids decide which document is kept, so
decisions do not depend on how the corpus was split into shards.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from data_pipeline.minhash.banding import band_keys
from data_pipeline.minhash.clustering import band_pairs, choose_kept, components, similarity

SIGNATURES_DIR = "signatures"
PAIRS_DIR = "pairs"
DECISIONS_DIR = "decisions"


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def signature_path(work_dir: Path, shard: int) -> Path:
    return Path(work_dir) / SIGNATURES_DIR / f"shard-{shard:05d}.npy"


def write_signatures(work_dir: Path, shard: int, ids: Sequence[str], signatures: np.ndarray) -> None:
    if len(ids) != len(signatures):
        raise ValueError(f"shard {shard}: {len(ids)} ids but {len(signatures)} signatures")
    path = signature_path(work_dir, shard)
    _write_atomic(path.with_suffix(".ids.json"), lambda f: f.write(json.dumps(list(ids)).encode()))
    _write_atomic(path, lambda f: np.save(f, np.ascontiguousarray(signatures, dtype=np.uint32)))


class SignatureStore:
    """All shards' signature files as one addressable table (memory-mapped; ids loaded only when asked)."""

    def __init__(self, work_dir: Path, n_shards: int) -> None:
        self.work_dir = Path(work_dir)
        self.paths = [signature_path(self.work_dir, s) for s in range(n_shards)]
        missing = [str(p) for p in self.paths if not p.exists()]
        if missing:
            raise FileNotFoundError(f"minhash signatures missing (signature stage unfinished?): {missing[:3]}")
        self.arrays = [np.load(p, mmap_mode="r") for p in self.paths]
        sizes = np.array([a.shape[0] for a in self.arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._ids: dict[int, list[str]] = {}

    @property
    def n_docs(self) -> int:
        return int(self.offsets[-1])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shards = np.searchsorted(self.offsets, positions, side="right") - 1
        return shards, positions - self.offsets[shards]

    def rows(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        shards, rows = self.locate(positions)
        num_perm = self.arrays[0].shape[1] if self.arrays else 0
        out = np.empty((positions.size, num_perm), dtype=np.uint32)
        for shard in np.unique(shards):
            mask = shards == shard
            out[mask] = self.arrays[shard][rows[mask]]
        return out

    def ids(self, positions: np.ndarray) -> list[str]:
        shards, rows = self.locate(np.asarray(positions, dtype=np.int64))
        result = []
        for shard, row in zip(shards.tolist(), rows.tolist()):
            if shard not in self._ids:
                self._ids[shard] = json.loads(self.paths[shard].with_suffix(".ids.json").read_text())
            result.append(self._ids[shard][row])
        return result

    def band_keys(self, band: int, rows: int) -> np.ndarray:
        parts = [band_keys(a, band, rows) for a in self.arrays]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def pairs_path(work_dir: Path, band: int) -> Path:
    return Path(work_dir) / PAIRS_DIR / f"band-{band:04d}.npy"


def find_band_pairs(work_dir: Path, n_shards: int, band: int, rows: int, threshold: float) -> Path:
    """Stage 2 for one band: write its verified pairs."""
    store = SignatureStore(work_dir, n_shards)
    pairs = band_pairs(store.band_keys(band, rows), store.rows, threshold)
    path = pairs_path(work_dir, band)
    _write_atomic(path, lambda f: np.save(f, pairs))
    return path


def decisions_path(work_dir: Path, shard: int) -> Path:
    return Path(work_dir) / DECISIONS_DIR / f"shard-{shard:05d}.json"


def resolve_clusters(work_dir: Path, n_shards: int, bands: int) -> dict[str, int]:
    """Stage 3: union the pairs of every band into clusters and write each shard's removals."""
    store = SignatureStore(work_dir, n_shards)
    missing = [str(pairs_path(work_dir, b)) for b in range(bands) if not pairs_path(work_dir, b).exists()]
    if missing:
        raise FileNotFoundError(f"minhash band pairs missing (band stage unfinished?): {missing[:3]}")
    pair_arrays = [np.load(pairs_path(work_dir, b)) for b in range(bands)]
    pairs = np.unique(np.concatenate(pair_arrays).reshape(-1, 2), axis=0) if pair_arrays else np.zeros((0, 2))
    kept_of = choose_kept(components(store.n_docs, pairs), store.ids)
    removed = np.array(sorted(p for p, (k, _) in kept_of.items() if p != k), dtype=np.int64)
    kept = np.array([kept_of[int(p)][0] for p in removed], dtype=np.int64)
    per_shard: list[dict[str, dict]] = [{} for _ in range(n_shards)]
    if removed.size:
        sims = similarity(store.rows(removed), store.rows(kept))
        shards, rows = store.locate(removed)
        kept_ids = store.ids(kept)
        for shard, row, kept_id, sim, pos in zip(shards.tolist(), rows.tolist(), kept_ids, sims.tolist(), removed):
            per_shard[shard][str(row)] = {
                "cluster_id": kept_id,
                "kept_id": kept_id,
                "cluster_size": kept_of[int(pos)][1],
                "similarity": round(float(sim), 4),
            }
    for shard, decisions in enumerate(per_shard):
        _write_atomic(decisions_path(work_dir, shard), lambda f, d=decisions: f.write(json.dumps(d).encode()))
    clusters = len({k for k, _ in kept_of.values()})
    return {"pairs": int(len(pairs)), "clusters": clusters, "removed": int(removed.size)}


def load_decisions(work_dir: Path, shard: int) -> dict[int, dict]:
    path = decisions_path(work_dir, shard)
    if not path.exists():
        raise FileNotFoundError(f"{path}: minhash cluster decisions missing (cluster stage unfinished?)")
    return {int(row): info for row, info in json.loads(path.read_text()).items()}
