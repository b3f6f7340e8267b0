"""Per-document metrics, their aggregations and standard errors, as lm-evaluation-harness 0.4.13 defines them.

Aggregations: mean, median, nanmean, perplexity (exp of minus the mean log-likelihood), weighted_perplexity and
bits_per_byte (over (log-likelihood, words or bytes) pairs: sum over sum), brier_score, bleu / chrf / chrf++ / ter
(sacrebleu corpus scores of (reference, prediction) pairs). Standard errors: the closed form for `mean` (sample
standard deviation / sqrt(n)); lm-eval's bootstrap for median, nanmean, perplexity and the sacrebleu scores (chunks
of at most 1000 resamples, chunk i drawn with random.Random(i); at most 100 resamples for bleu/chrf/chrf++/ter);
none ("N/A") for weighted_perplexity, bits_per_byte and brier_score. Group scores: size-weighted mean with the
pooled standard error, or the plain mean with sqrt(sum se^2)/k.

ROUGE comes from `rouge-score` (F-measure of one rouge type per document, mean over documents) and BLEU/chrF from
`sacrebleu`; neither is rewritten here.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

NOT_AVAILABLE = "N/A"


# ---------------------------------------------------------------- aggregations (list of per-document items -> float)
def mean(items):
    return sum(items) / len(items)


def median(items):
    return sorted(items)[len(items) // 2]


def nanmean(items):
    if len(items) == 0 or all(np.isnan(items)):
        return np.nan
    return np.nanmean(items)


def weighted_mean(pairs):
    values, weights = zip(*pairs)
    return sum(values) / sum(weights)


def perplexity(items):
    return math.exp(-mean(items))


def weighted_perplexity(pairs):
    return math.exp(-weighted_mean(pairs))


def bits_per_byte(pairs):
    return -weighted_mean(pairs) / math.log(2)


def brier_score(items):
    gold, probabilities = list(zip(*items))
    _, num_choices = np.array(probabilities).shape
    one_hot = np.eye(num_choices)[list(gold)]
    return np.mean(np.sum((probabilities - one_hot) ** 2, axis=1))


def _sacrebleu_streams(items):
    """(reference, prediction) pairs -> (list of reference streams, predictions), sacrebleu's corpus layout."""
    refs = [ref if isinstance(ref, (list, tuple)) else [ref] for ref, _ in items]
    preds = [pred[0] if isinstance(pred, (list, tuple)) else pred for _, pred in items]
    return [list(stream) for stream in zip(*refs)], preds


def bleu(items):
    import sacrebleu

    refs, preds = _sacrebleu_streams(items)
    return sacrebleu.corpus_bleu(preds, refs).score


def chrf(items):
    import sacrebleu

    refs, preds = _sacrebleu_streams(items)
    return sacrebleu.corpus_chrf(preds, refs).score


def chrf_plus_plus(items):
    import sacrebleu

    refs, preds = _sacrebleu_streams(items)
    return sacrebleu.corpus_chrf(preds, refs, word_order=2).score


def ter(items):
    import sacrebleu

    refs, preds = _sacrebleu_streams(items)
    return sacrebleu.corpus_ter(preds, refs).score


AGGREGATIONS: dict[str, Callable] = {
    "mean": mean,
    "median": median,
    "nanmean": nanmean,
    "perplexity": perplexity,
    "weighted_perplexity": weighted_perplexity,
    "bits_per_byte": bits_per_byte,
    "brier_score": brier_score,
    "bleu": bleu,
    "chrf": chrf,
    "chrf++": chrf_plus_plus,
    "ter": ter,
}
_BOOTSTRAPPED = {median, nanmean, perplexity, bleu, chrf, chrf_plus_plus, ter}
_FEW_RESAMPLES = {"bleu", "chrf", "chrf++", "ter"}  # lm-eval caps these at 100 resamples (each is a corpus score)


# ---------------------------------------------------------------- standard errors
def sample_stddev(values: Sequence[float]) -> float:
    mu = mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (len(values) - 1))


def mean_stderr(values: Sequence[float]) -> float:
    return sample_stddev(values) / math.sqrt(len(values))


def bootstrap_stderr(statistic: Callable, items: Sequence, iters: int) -> float:
    """Standard deviation of `statistic` over resamples, drawn in lm-eval's order so the numbers are the same."""
    chunk = min(1000, iters)
    replicates = []
    for seed in range(iters // chunk):
        rnd = random.Random(seed)
        replicates.extend(statistic(rnd.choices(items, k=len(items))) for _ in range(chunk))
    return sample_stddev(replicates)


def stderr(metric: str, aggregation: Callable, items: Sequence, bootstrap_iters: int):
    """lm-eval's standard error of one aggregated metric, or "N/A" where it reports none."""
    if bootstrap_iters <= 0 or len(items) <= 1:
        return NOT_AVAILABLE
    if aggregation in _BOOTSTRAPPED:
        iters = min(bootstrap_iters, 100) if metric in _FEW_RESAMPLES else bootstrap_iters
        return bootstrap_stderr(aggregation, items, iters)
    if aggregation is mean:
        return mean_stderr(items)
    return NOT_AVAILABLE


def pooled_sample_stderr(stderrs: list[float], sizes: list[int]) -> float:
    pooled_var = sum((size - 1) * se**2 * size for size, se in zip(sizes, stderrs)) / (sum(sizes) - len(sizes))
    return float(np.sqrt(pooled_var / sum(sizes)))


def unweighted_mean_stderr(stderrs: list[float]) -> float:
    return float(np.sqrt(sum(se**2 for se in stderrs)) / len(stderrs))


def aggregate_subtask_metrics(values: list[float], sizes: list[int], weight_by_size: bool = True) -> float:
    weights = sizes if weight_by_size else [1] * len(sizes)
    return sum(v * w for v, w in zip(values, weights)) / sum(weights)


# ---------------------------------------------------------------- per-document metrics of generated text
def exact_match(
    reference: str,
    prediction: str,
    regexes_to_ignore=None,
    ignore_case=False,
    ignore_punctuation=False,
    ignore_numbers=False,
) -> float:
    """1.0 when the prediction equals the reference after lm-eval's optional normalisations, else 0.0."""
    pair = [prediction, reference]
    for pattern in regexes_to_ignore or []:
        pair = [re.sub(pattern, "", s) for s in pair]
    if ignore_case:
        pair = [s.lower() for s in pair]
    if ignore_punctuation:
        pair = [s.translate(str.maketrans("", "", string.punctuation)) for s in pair]
    if ignore_numbers:
        pair = [s.translate(str.maketrans("", "", string.digits)) for s in pair]
    return float(pair[0] == pair[1])


@lru_cache(maxsize=32)
def _rouge_scorer(rouge_type: str, use_stemmer: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=use_stemmer)


def rouge(rouge_type: str, reference: str, prediction: str, use_stemmer: bool = False) -> float:
    """rouge-score's F-measure of `rouge_type` (rouge1, rouge2, rougeL, rougeLsum) for one document."""
    return _rouge_scorer(rouge_type, bool(use_stemmer)).score(reference, prediction)[rouge_type].fmeasure


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


# ---------------------------------------------------------------- the metrics a task's metric_list may name
@dataclass(frozen=True)
class MetricInfo:
    """A built-in metric: its default aggregation, direction, and the output types that produce it."""

    aggregation: str
    higher_is_better: bool
    output_types: tuple[str, ...]


BUILTIN_METRICS: dict[str, MetricInfo] = {
    "acc": MetricInfo("mean", True, ("loglikelihood", "multiple_choice")),
    "acc_norm": MetricInfo("mean", True, ("multiple_choice",)),
    "acc_bytes": MetricInfo("mean", True, ("multiple_choice",)),
    "acc_mutual_info": MetricInfo("mean", True, ("multiple_choice",)),
    "brier_score": MetricInfo("brier_score", False, ("multiple_choice",)),
    "exact_match": MetricInfo("mean", True, ("multiple_choice", "generate_until")),
    "perplexity": MetricInfo("perplexity", False, ("loglikelihood",)),
    "word_perplexity": MetricInfo("weighted_perplexity", False, ("loglikelihood_rolling",)),
    "byte_perplexity": MetricInfo("weighted_perplexity", False, ("loglikelihood_rolling",)),
    # bits_per_byte of a multiple-choice task is the gold continuation's (an addition: lm-eval has it only for
    # rolling log-likelihood)
    "bits_per_byte": MetricInfo("bits_per_byte", False, ("loglikelihood_rolling", "multiple_choice")),
    "bleu": MetricInfo("bleu", True, ("generate_until",)),
    "chrf": MetricInfo("chrf", True, ("generate_until",)),
    "chrf++": MetricInfo("chrf++", True, ("generate_until",)),
    "ter": MetricInfo("ter", False, ("generate_until",)),
    **{name: MetricInfo("mean", True, ("generate_until",)) for name in ROUGE_TYPES},
}

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "loglikelihood": ("perplexity", "acc"),
    "loglikelihood_rolling": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
    "multiple_choice": ("acc", "acc_norm"),
    "generate_until": ("exact_match",),
}
