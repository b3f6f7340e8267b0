"""LSH banding: which (bands, rows) to use for a Jaccard threshold, and the per-band bucket keys of signatures.

Two documents become a candidate pair when all `rows` values of at least one band agree, which happens with
probability 1 - (1 - s**rows)**bands for Jaccard similarity s. The (bands, rows) choice minimises the weighted
false-positive + false-negative areas under that curve, computed by datasketch's `MinHashLSH` (the well-kept
implementation of that optimisation); its public `b` and `r` are read back. Candidates are then verified
against the threshold on the full signature (see clustering.py), so the default weights favour recall.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_U64 = np.uint64


@lru_cache(maxsize=64)
def optimal_bands(
    threshold: float, num_perm: int, false_positive_weight: float = 0.05, false_negative_weight: float = 0.95
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted error for `threshold`."""
    from datasketch import MinHashLSH

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold}: a Jaccard threshold must be strictly between 0 and 1")
    if abs(false_positive_weight + false_negative_weight - 1.0) > 1e-6:
        raise ValueError(
            f"false_positive_weight + false_negative_weight = {false_positive_weight + false_negative_weight}: "
            "they must sum to 1"
        )
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(false_positive_weight, false_negative_weight))
    return int(lsh.b), int(lsh.r)


def check_bands(bands: int, rows: int, num_perm: int) -> None:
    if bands < 1 or rows < 1:
        raise ValueError(f"bands={bands}, rows={rows}: both must be >= 1")
    if bands * rows > num_perm:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm={num_perm}: lower bands or rows")


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that a pair with this Jaccard similarity shares at least one band bucket."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=float) ** rows) ** bands


def band_keys(signatures: np.ndarray, band: int, rows: int) -> np.ndarray:
    """64-bit bucket key of band `band` for each signature row (hash of its `rows` values)."""
    part = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows]).astype(np.uint64)
    key = np.full(part.shape[0], _U64(0x243F6A8885A308D3) ^ _U64(band), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in range(part.shape[1]):
            key ^= part[:, column]
            key *= _U64(0x100000001B3)  # FNV-style step, then a full mix below
            key ^= key >> _U64(29)
        key ^= key >> _U64(32)
        key *= _U64(0xD6E8FEB86659FD93)
        key ^= key >> _U64(32)
    return key


def detection_probability(
    similarity: float | np.ndarray, bands: int, rows: int, num_perm: int, threshold: float
) -> np.ndarray:
    """Probability that a pair of this Jaccard similarity is found: it shares a bucket and its signatures agree
    on >= threshold of num_perm values (each value agrees with probability `similarity`; the two events are
    treated as independent, a slight underestimate since sharing a band raises the agreement)."""
    from scipy.stats import binom

    need = int(np.ceil(threshold * num_perm - 1e-9))
    s = np.asarray(similarity, dtype=float)
    return candidate_probability(s, bands, rows) * binom.sf(need - 1, num_perm, s)
