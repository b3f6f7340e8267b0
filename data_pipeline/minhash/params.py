"""MinHash dedup parameters in one place, validated early, shared by the step, the tests and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from data_pipeline.minhash.banding import check_bands, optimal_bands
from data_pipeline.minhash.signatures import MinHasher


@dataclass(frozen=True)
class MinHashParams:
    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    bands: Optional[int] = None  # given together with rows, or both derived from the threshold
    rows: Optional[int] = None
    false_positive_weight: float = 0.05
    false_negative_weight: float = 0.95
    seed: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"minhash threshold={self.threshold}: must be strictly between 0 and 1")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("minhash bands and rows: give both (e.g. bands=9 rows=13) or neither")
        if self.bands is not None:
            check_bands(self.bands, self.rows, self.num_perm)

    @property
    def banding(self) -> tuple[int, int]:
        if self.bands is not None:
            return self.bands, self.rows
        return optimal_bands(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def hasher(self) -> MinHasher:
        return MinHasher(num_perm=self.num_perm, ngram=self.ngram, seed=self.seed)
