"""Few-shot example samplers with lm-evaluation-harness's draws (seed 1234 unless told otherwise).

`default`: one random.Random per task, shared by its documents in order; n examples drawn with rnd.sample, or n+1
with the evaluated document removed when the few-shot pool is the evaluated split (lm-eval's rule: the few-shot
split's name equals `test_split`). `first_n`: the first n of the pool (minus the document in that case).
"""

from __future__ import annotations

from random import Random
from typing import Any

Doc = dict[str, Any]


class DefaultSampler:
    def __init__(self, pool: list[Doc], seed: int | None) -> None:
        self.pool = list(pool)
        self.rnd = Random(seed)

    def sample(self, n: int, exclude: Doc | None = None) -> list[Doc]:
        if n == 0:
            return []
        if not exclude:
            return self.rnd.sample(self.pool, n)
        drawn = [doc for doc in self.rnd.sample(self.pool, n + 1) if doc != exclude][:n]
        if len(drawn) < n:  # the pool held copies of the evaluated document
            drawn = self.rnd.sample([doc for doc in self.pool if doc != exclude], n)
        return drawn


class FirstNSampler(DefaultSampler):
    def sample(self, n: int, exclude: Doc | None = None) -> list[Doc]:
        pool = [doc for doc in self.pool if doc != exclude] if exclude is not None else self.pool
        if n > len(pool):
            raise ValueError(f"first_n sampler: {n} few-shot examples asked for, the pool has {len(pool)}")
        return pool[:n]


SAMPLERS = {"default": DefaultSampler, "first_n": FirstNSampler}
