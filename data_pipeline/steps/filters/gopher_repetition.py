"""Gopher's repetition rules (Rae et al. 2021, table A1), with the thresholds datatrove and FineWeb use.

Measured on the text as it is: duplicated paragraphs (split on blank lines) and lines, as a fraction of items and
of characters; the characters of the most frequent 2/3/4-gram; the characters covered by repeated 5..10-grams.
Character fractions are of `len(text)`, as in datatrove. Two definitions differ from datatrove's, on purpose:
- n-grams are over whitespace words (datatrove: NLTK/spaCy tokens, punctuation separate);
- "duplicated n-gram characters" counts each word covered by a repeated occurrence (not the first) of an
  n-gram once, which is Gopher's wording; datatrove scans greedily and skips n words after each repeat, which
  can miss overlapping repeats. On a text repeated k times both give the same figure.
The n-gram work is vectorised over 64-bit word hashes (numpy); an upper bound from word counts settles most
documents before any n-gram is counted.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import numpy as np

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject
from data_pipeline.steps.filters.text import duplicated, words_of

_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash

TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def _thresholds(name: str, value: Optional[Mapping]) -> dict[int, float]:
    if value is None or value is False:
        return {}
    try:
        return {int(n): float(t) for n, t in dict(value).items() if t is not None}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gopher_repetition.{name}: expected {{n: fraction}}, got {value!r}") from exc


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-gram (len(words) - n + 1 values), from the words' hashes."""
    out = word_hashes[: len(word_hashes) - n + 1].copy()
    for k in range(1, n):
        out *= _MIX
        out ^= word_hashes[k : len(word_hashes) - n + 1 + k]
    return out


def _window_min(values: np.ndarray, n: int) -> np.ndarray:
    """The minimum of every window of n consecutive values."""
    out = values[: len(values) - n + 1].copy()
    for k in range(1, n):
        np.minimum(out, values[k : len(values) - n + 1 + k], out=out)
    return out


def repeat_starts(hashes: np.ndarray) -> np.ndarray:
    """Positions whose n-gram occurred earlier in the text."""
    _, first = np.unique(hashes, return_index=True)
    repeat = np.ones(len(hashes), dtype=bool)
    repeat[first] = False
    return np.flatnonzero(repeat)


class GopherRepetition(FilterStep):
    name = "gopher_repetition"

    def __init__(
        self,
        dup_para_frac: Optional[float] = 0.30,
        dup_para_char_frac: Optional[float] = 0.20,
        dup_line_frac: Optional[float] = 0.30,
        dup_line_char_frac: Optional[float] = 0.20,
        top_ngram_char_frac: Optional[Mapping] = None,
        dup_ngram_char_frac: Optional[Mapping] = None,
    ) -> None:
        super().__init__()
        self.dup_para_frac = dup_para_frac
        self.dup_para_char_frac = dup_para_char_frac
        self.dup_line_frac = dup_line_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.top_ngrams = _thresholds(
            "top_ngram_char_frac", TOP_NGRAMS if top_ngram_char_frac is None else top_ngram_char_frac
        )
        self.dup_ngrams = _thresholds(
            "dup_ngram_char_frac", DUP_NGRAMS if dup_ngram_char_frac is None else dup_ngram_char_frac
        )

    def filter(self, doc: Document) -> Verdict:
        text = doc.text
        total = len(text) or 1
        lines = [line for line in text.split("\n") if line]
        # A repeated paragraph repeats its lines: with no line repeated, neither rule can fire.
        repeats = len(set(lines)) < len(lines)
        for unit, items, frac_limit, char_limit in (
            (
                "para",
                _PARAGRAPH_BREAK.split(text.strip()) if repeats else [],
                self.dup_para_frac,
                self.dup_para_char_frac,
            ),
            ("line", lines, self.dup_line_frac, self.dup_line_char_frac),
        ):
            if not repeats or (frac_limit is None and char_limit is None):
                continue
            count, chars = duplicated(items)
            if frac_limit is not None and count / len(items) > frac_limit:
                return reject(f"dup_{unit}_frac", round(count / len(items), 4), frac_limit)
            if char_limit is not None and chars / total > char_limit:
                return reject(f"dup_{unit}_char_frac", round(chars / total, 4), char_limit)
        if not self.top_ngrams and not self.dup_ngrams:
            return True
        words = words_of(text)
        if len(words) < 2:
            return True
        word_hashes = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        cumulative = np.concatenate(([0], np.cumsum(lengths)))
        # An n-gram occurs at most as often as its rarest word: a cheap upper bound that settles most documents
        # without sorting their n-grams (prose rarely repeats a long phrase often enough to come near a limit).
        _, word_ids, word_counts = np.unique(word_hashes, return_inverse=True, return_counts=True)
        occurrences = word_counts[word_ids]
        for n, limit in self.top_ngrams.items():
            if len(words) < n:
                continue
            chars = cumulative[n:] - cumulative[:-n]
            if int((_window_min(occurrences, n) * chars).max()) <= limit * total:
                continue
            _, inverse, counts = np.unique(ngram_hashes(word_hashes, n), return_inverse=True, return_counts=True)
            # The most frequent n-gram; among equally frequent ones, the longest (datatrove takes the first seen).
            top_count = int(counts.max())
            fraction = top_count * int(chars[counts[inverse] == top_count].max()) / total
            if fraction > limit:
                return reject(f"top_{n}gram_char_frac", round(fraction, 4), limit)
        for n, limit in sorted(self.dup_ngrams.items()):
            if len(words) < n or not (_window_min(occurrences, n) >= 2).any():
                break  # no n-gram can repeat, so no longer one does either
            hashes = ngram_hashes(word_hashes, n)
            if len(set(hashes.tolist())) == len(hashes):
                break  # a Python set answers "any repeat?" ~3x faster than a sort on a few hundred values
            starts = repeat_starts(hashes)
            boundaries = np.bincount(starts, minlength=len(words) + 1) - np.bincount(
                starts + n, minlength=len(words) + 1
            )
            covered = np.cumsum(boundaries[: len(words)]) > 0
            fraction = int(lengths[covered].sum()) / total
            if fraction > limit:
                return reject(f"dup_{n}gram_char_frac", round(fraction, 4), limit)
        return True
