"""A document's metric values from the Scorer's answers, as lm-eval's ConfigurableTask.process_results makes them.

Multiple choice: argmax of the log-likelihoods (acc), of log-likelihood per character (acc_norm) and per byte
(acc_bytes), of conditional minus unconditional log-likelihood (acc_mutual_info); the gold choice's greedy flag
(exact_match); (gold, softmax of the log-likelihoods) for brier_score; and, added here, (gold log-likelihood, bytes
of the scored gold continuation) for bits_per_byte. Rolling: (log-likelihood, words or bytes) pairs. Generation:
each metric on (gold, generated); with several golds a metric counts 1.0 when any gold scores.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from evaluation import metrics as M
from evaluation.task_settings import MetricSpec


def count_words(text: str) -> int:
    """lm-eval's word count for word perplexity: pieces between runs of whitespace."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def softmax(values) -> np.ndarray:
    exps = np.exp(values - np.max(values))
    return exps / exps.sum()


def loglikelihood_results(answer: tuple[float, bool]) -> dict[str, Any]:
    ll, greedy = answer
    return {"perplexity": ll, "acc": int(greedy)}


def rolling_results(text: str, ll: float) -> dict[str, Any]:
    return {
        "word_perplexity": (ll, count_words(text)),
        "byte_perplexity": (ll, count_bytes(text)),
        "bits_per_byte": (ll, count_bytes(text)),
    }


def gold_index(target, choices: list[str]) -> int | list[int] | None:
    """The gold choice index (or indices) of a target that is an index, a choice's text, or a list of indices;
    None when it names no choice."""
    if isinstance(target, list):
        return target if all(isinstance(g, int) and g < len(choices) for g in target) else None
    if isinstance(target, str):
        return choices.index(target) if target in choices else None
    if isinstance(target, int):
        return target if target < len(choices) else None
    return None


def multiple_choice_results(
    choices: list[str], gold: int | list[int], answers: list, wanted: set[str], target_delimiter: str
) -> dict[str, Any]:
    lls, greedy = zip(*answers)
    if 2 * len(choices) == len(lls) and "acc_mutual_info" in wanted:
        unconditional, lls = lls[len(choices) :], lls[: len(choices)]
    char_lens = np.array([float(len(c)) for c in choices])
    byte_lens = np.array([float(len(c.encode("utf-8"))) for c in choices])
    multi = isinstance(gold, list)

    def hit(pred) -> float:
        return 1.0 if (pred in gold if multi else pred == gold) else 0.0

    out: dict[str, Any] = {
        "acc": hit(np.argmax(lls)),
        "acc_norm": hit(np.argmax(lls / char_lens)),
        "acc_bytes": hit(np.argmax(lls / byte_lens)),
        "exact_match": int(any(greedy[g] for g in gold)) if multi else int(greedy[gold]),
        "brier_score": (gold, softmax(lls)),
    }
    if "bits_per_byte" in wanted:
        first = gold[0] if multi else gold
        out["bits_per_byte"] = (lls[first], count_bytes(f"{target_delimiter}{choices[first]}"))
    if "acc_mutual_info" in wanted:
        out["acc_mutual_info"] = hit(np.argmax([c - u for c, u in zip(lls, unconditional)]))
    return out


def generation_results(metrics: list[MetricSpec], gold, generated: str) -> dict[str, Any]:
    multi = isinstance(gold, list)
    if not multi and not isinstance(gold, str):
        gold = str(gold)
    out = {}
    for spec in metrics:
        if multi:
            out[spec.name] = 1.0 if any(_generation_metric(spec, g, generated) for g in gold) else 0.0
        else:
            out[spec.name] = _generation_metric(spec, gold, generated)
    return out


def _generation_metric(spec: MetricSpec, gold: str, generated: str):
    if spec.function is not None:
        try:
            value = spec.function(references=[gold], predictions=[generated], **spec.kwargs)
        except TypeError:
            value = spec.function([gold, generated])
        return value[spec.name] if isinstance(value, dict) else value
    if spec.name == "exact_match":
        return M.exact_match(gold, generated, **spec.kwargs)
    if spec.name in M.ROUGE_TYPES:
        return M.rouge(spec.name, gold, generated, **spec.kwargs)
    return [gold, generated]  # corpus metrics (bleu, chrf, chrf++, ter) aggregate the pairs
