"""Gopher's repetition rules (Rae et al. 2021, table A1), with the thresholds datatrove and FineWeb use, measured
as datatrove measures them.

Paragraphs are the stripped text cut at runs of 2+ newlines, lines the text cut at runs of newlines; an item equal
to an earlier one is a duplicate, counted as a fraction of the items and, by its characters, of `len(text)`. The
n-gram rules are over the word tokenizer's tokens (`text.words_of`): the most frequent 2/3/4-gram (the first
seen among equally frequent ones) weighs its count times its length with a space between tokens; the duplicated
5..10-gram characters are found as datatrove scans: left to right, an n-gram whose tokens, concatenated, equal an
earlier scanned one adds its characters and the scan jumps past it (the n-grams it jumps over are not scanned).

Vectorised over 64-bit hashes (numpy): n-grams by a rolling hash of their tokens, and by a polynomial hash of
their concatenated characters (the same for the same string however it is cut into tokens). Every repeated
n-gram the scan counts is a later occurrence of an n-gram, so the characters of the tokens covered by later
occurrences bound the figure from above; the sequential scan runs only when that bound passes the limit.
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
_BASE = 0x100000001B3  # odd base of the polynomial string hash (mod 2**64)
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)

TOP_NGRAMS = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAMS = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def _thresholds(name: str, value: Optional[Mapping]) -> dict[int, float]:
    if value is None or value is False:
        return {}
    try:
        return {int(n): float(t) for n, t in dict(value).items() if t is not None}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gopher_repetition.{name}: expected {{n: fraction}}, got {value!r}") from exc


def paragraphs(text: str) -> list[str]:
    """`re.split(r"\n{2,}", text.strip())`; a plain `str.split` when no run is longer than two newlines (normalized
    text: the normalize step leaves none), four times faster."""
    text = text.strip()
    return text.split("\n\n") if "\n\n\n" not in text else _PARAGRAPH_BREAK.split(text)


def lines(text: str) -> list[str]:
    """`re.split(r"\n+", text)` from a plain `str.split`: the empty pieces runs of newlines leave dropped, except the
    first and the last (text starting or ending with a newline), which the regex keeps too."""
    pieces = text.split("\n")
    if len(pieces) > 2 and "" in pieces[1:-1]:
        pieces = [pieces[0], *filter(None, pieces[1:-1]), pieces[-1]]
    return pieces


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-gram as a sequence of tokens (len(words) - n + 1 values), from the tokens' hashes."""
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


def _power_table(base: int, size: int) -> np.ndarray:
    """base**k mod 2**64 for k < size (cumulative products: the first values do not depend on size)."""
    one = np.ones(1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return np.cumprod(np.concatenate((one, np.full(size - 1, base, dtype=np.uint64))), dtype=np.uint64)


_POWERS: dict[int, np.ndarray] = {}  # base -> its power table, grown (doubled) as longer texts come


def _powers(base: int, size: int) -> np.ndarray:
    table = _POWERS.get(base)
    if table is None or len(table) < size:
        table = _POWERS[base] = _power_table(base, max(size, 2 * len(table) if table is not None else 1 << 16))
    return table


class StringHashes:
    """Polynomial hashes of substrings of one string, each in O(1) after an O(len) pass: equal substrings get
    equal hashes wherever they are. The powers of the base and of its inverse are computed once per process."""

    def __init__(self, text: str) -> None:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
        n = len(codes)
        self.powers = _powers(_BASE, n + 1)
        with np.errstate(over="ignore"):
            weighted = codes * _powers(_BASE_INVERSE, n)[:n]
            self.prefix = np.concatenate((np.zeros(1, dtype=np.uint64), np.cumsum(weighted, dtype=np.uint64)))

    def of(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Hashes of text[starts[i]:ends[i]] (non-empty)."""
        with np.errstate(over="ignore"):
            return self.powers[ends - 1] * (self.prefix[ends] - self.prefix[starts])


class Groups:
    """The positions of equal keys, grouped by one unstable sort (`np.argsort`'s default): what `np.unique` gives
    with `return_index`/`return_inverse`/`return_counts`, three times faster, since only per-group aggregates are
    read (the lowest position of a group, its size), which the order within a group does not change."""

    def __init__(self, keys: np.ndarray) -> None:
        self.order = np.argsort(keys)
        ordered = keys[self.order]
        size = len(keys)
        starts = np.empty(size, dtype=bool)  # where a group starts in key order (filled in place: small arrays,
        if size:  # so numpy's per-call cost is what counts)
            starts[0] = True
            np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
        self.bounds = bounds = np.flatnonzero(starts)
        self.counts = np.empty(len(bounds), dtype=np.int64)
        np.subtract(bounds[1:], bounds[:-1], out=self.counts[:-1])
        self.counts[-1:] = size - bounds[-1:]

    def first(self) -> np.ndarray:
        """Each group's lowest position, groups in key order."""
        return np.minimum.reduceat(self.order, self.bounds)

    def occurrences(self) -> np.ndarray:
        """For each position, how many positions hold its key."""
        out = np.empty(len(self.order), dtype=self.counts.dtype)
        out[self.order] = np.repeat(self.counts, self.counts)
        return out


def greedy_repeated_chars(keys: np.ndarray, chars: np.ndarray, n: int, groups: Optional[Groups] = None) -> int:
    """datatrove's scan: a key seen before adds its characters and jumps n ahead; others are remembered. Only
    keys that occur more than once can repeat or be repeated, so the scan visits only their positions (`groups`:
    the keys' `Groups`, computed here unless given)."""
    positions = np.flatnonzero((groups or Groups(keys)).occurrences() > 1)
    seen: set = set()
    total = 0
    barrier = 0  # positions before it were jumped over
    for position, key, size in zip(positions.tolist(), keys[positions].tolist(), chars[positions].tolist()):
        if position < barrier:
            continue
        if key in seen:
            total += size
            barrier = position + n
        else:
            seen.add(key)
    return total


def covered_chars(keys: np.ndarray, lengths: np.ndarray, n: int, groups: Optional[Groups] = None) -> int:
    """Characters of the tokens covered by a later occurrence of an n-gram (an upper bound of the scan's sum);
    `groups`: the keys' `Groups`, computed here unless given."""
    later = np.ones(len(keys), dtype=bool)
    later[(groups or Groups(keys)).first()] = False
    starts = np.flatnonzero(later)
    if not len(starts):
        return 0
    size = len(lengths) + 1
    depth = np.bincount(starts, minlength=size) - np.bincount(starts + n, minlength=size)
    return int(lengths[np.cumsum(depth[: len(lengths)]) > 0].sum())


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
        language: str = "en",
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
        self.language = language

    def filter(self, doc: Document) -> Verdict:
        text = doc.text
        if not text:
            return reject("empty", 0, 1)
        total = len(text)
        for unit, items, frac_limit, char_limit in (
            ("para", paragraphs(text), self.dup_para_frac, self.dup_para_char_frac),
            ("line", lines(text), self.dup_line_frac, self.dup_line_char_frac),
        ):
            if frac_limit is None and char_limit is None:
                continue
            count, chars = duplicated(items)
            if frac_limit is not None and count / len(items) > frac_limit:
                return reject(f"dup_{unit}_frac", round(count / len(items), 4), frac_limit)
            if char_limit is not None and chars / total > char_limit:
                return reject(f"dup_{unit}_char_frac", round(chars / total, 4), char_limit)
        if not self.top_ngrams and not self.dup_ngrams:
            return True
        words = words_of(text, self.language)
        if not len(words):
            return True
        lengths = words.lengths()
        cumulative = np.concatenate(([0], np.cumsum(lengths)))
        if self.top_ngrams:
            word_hashes = words.hashes()
            # An n-gram occurs at most as often as its rarest token: a cheap upper bound that settles most
            # documents without counting their n-grams.
            occurrences = Groups(word_hashes).occurrences()
        for n, limit in self.top_ngrams.items():
            if len(words) < n:
                continue
            joined = cumulative[n:] - cumulative[:-n] + (n - 1)  # len(" ".join(ngram))
            if int((_window_min(occurrences, n) * joined).max()) <= limit * total:
                continue
            groups = Groups(ngram_hashes(word_hashes, n))
            top = int(groups.counts.max())
            position = int(groups.first()[groups.counts == top].min())  # the first seen of the most frequent
            fraction = top * int(joined[position]) / total
            if fraction > limit:
                return reject(f"top_{n}gram_char_frac", round(fraction, 4), limit)
        if not self.dup_ngrams:
            return True
        strings = StringHashes(words.joined())
        for n, limit in self.dup_ngrams.items():
            if len(words) < n:
                continue
            starts, ends = cumulative[: len(words) - n + 1], cumulative[n:]
            keys = strings.of(starts, ends)
            groups = Groups(keys)  # one sort for the bound and the scan
            if covered_chars(keys, lengths, n, groups) <= limit * total:
                continue
            fraction = greedy_repeated_chars(keys, ends - starts, n, groups) / total
            if fraction > limit:
                return reject(f"dup_{n}gram_char_frac", round(fraction, 4), limit)
        return True
