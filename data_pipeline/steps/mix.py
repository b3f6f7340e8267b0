"""Mix several sources to a target token budget with given weights, down- or up-sampling each source.

Stages: count the tokens (whitespace words) of each source in every shard -> one reduce turns weights and the
budget into a sampling rate per source (capped at `max_repeats` copies of a document, the rest of the budget is
then left unfilled and reported) -> each shard keeps floor(rate) or ceil(rate) copies of every document,
chosen by a hash of (seed, id), so the result is deterministic for a seed and independent of shard order.
Repeated copies get ids `<id>#rep<k>`; documents sampled out are excluded as `mix:downsampled`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from typing import Iterable, Iterator, Mapping, Optional

from data_pipeline.document import Document
from data_pipeline.steps.base import Stage, Step


def _unit_hash(seed: int, doc_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class Mix(Step):
    name = "mix"

    def __init__(
        self,
        weights: Optional[Mapping[str, float]] = None,
        target_tokens: int = 0,
        max_repeats: float = 4.0,
        source_key: str = "source",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not weights:
            raise ValueError("mix.weights is required: a mapping {source name: weight}")
        self.weights = {str(k): float(v) for k, v in dict(weights).items()}
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"mix.weights={self.weights}: weights must be >= 0 with a positive sum")
        if target_tokens <= 0:
            raise ValueError(f"mix.target_tokens={target_tokens}: set a positive token budget")
        if max_repeats < 1:
            raise ValueError(f"mix.max_repeats={max_repeats}: must be at least 1")
        self.target_tokens = int(target_tokens)
        self.max_repeats = float(max_repeats)
        self.source_key = source_key
        self.seed = seed

    def stages(self) -> list[Stage]:
        return [Stage("count", self.count), Stage("plan", self.plan, per_shard=False), Stage("run", self.run)]

    def count(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        tokens: Counter = Counter()
        for doc in documents:
            tokens[str(doc.metadata.get(self.source_key))] += len(doc.text.split())
        self.context.write_atomic(f"counts-{rank:05d}.json", json.dumps(tokens).encode())

    def plan(self, world_size: int) -> None:
        available: Counter = Counter()
        for rank in range(world_size):
            available.update(json.loads(self.context.work_path(f"counts-{rank:05d}.json").read_text()))
        total_weight = sum(self.weights.values())
        rates, report = {}, {}
        for source, weight in self.weights.items():
            wanted = self.target_tokens * weight / total_weight
            have = available.get(source, 0)
            if have == 0 and wanted > 0:
                raise ValueError(
                    f"mix: source {source!r} has no documents (key {self.source_key!r}); present: {sorted(available)}"
                )
            rate = min(wanted / have, self.max_repeats) if have else 0.0
            rates[source] = rate
            report[source] = {
                "weight": weight / total_weight,
                "available_tokens": have,
                "wanted_tokens": wanted,
                "rate": rate,
                "capped": wanted / max(have, 1) > self.max_repeats,
            }
        self.context.write_atomic("plan.json", json.dumps({"rates": rates, "sources": report}, indent=2).encode())

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        rates = json.loads(self.context.work_path("plan.json").read_text())["rates"]
        for doc in documents:
            source = str(doc.metadata.get(self.source_key))
            if source not in rates:
                self.context.exclude(doc, self.rule("source_not_in_mix"), source, sorted(rates))
                continue
            rate = rates[source]
            copies = math.floor(rate) + (1 if _unit_hash(self.seed, doc.id) < rate - math.floor(rate) else 0)
            if copies == 0:
                self.context.exclude(
                    doc, self.rule("downsampled"), round(_unit_hash(self.seed, doc.id), 6), round(rate, 6)
                )
                continue
            words = len(doc.text.split())
            self.context.count(f"mix_tokens.{source}", words * copies)
            yield doc
            for k in range(1, copies):
                self.context.count("added_copies")
                yield Document(f"{doc.id}#rep{k}", doc.text, doc.metadata)
