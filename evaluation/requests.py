"""The requests a task asks of a model, and the Scorer that answers them.

The three request kinds and the Scorer's return shapes follow lm-evaluation-harness's `LM` contract
(`loglikelihood`, `loglikelihood_rolling`, `generate_until`), so lm-eval's own HFLM can answer our requests in the
tests and our numbers can be held against lm-eval's. Torch-free: this module is the contract, not a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log P(continuation | context), summed over the continuation's tokens, and whether it is the greedy choice.

    Tokenisation follows lm-eval's HFLM: context+continuation encoded whole, the continuation's tokens split off;
    trailing spaces of the context moved onto the continuation; an empty context scored after the BOS/EOT token.
    """

    context: str
    continuation: str


@dataclass(frozen=True)
class RollingRequest:
    """Whole-text log-likelihood over lm-eval's rolling windows (BOS/EOT id as the first prefix)."""

    text: str


@dataclass(frozen=True)
class GenerationRequest:
    """Greedy generation from `context`, cut at the first of the `until` strings (lm-eval semantics)."""

    context: str
    until: tuple[str, ...]
    max_gen_toks: int = 256


Request = LoglikelihoodRequest | RollingRequest | GenerationRequest


@runtime_checkable
class Scorer(Protocol):
    """Answers requests in order, one answer per request; same semantics as `lm_eval.api.model.LM`."""

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether every continuation token is the argmax)."""
        ...

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[float]:
        """Summed log-probability of each whole text."""
        ...

    def generate_until(self, requests: list[GenerationRequest]) -> list[str]:
        """The greedy continuation of each context, cut before the first stop string."""
        ...
