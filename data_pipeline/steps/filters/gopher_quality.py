"""Gopher's quality rules (Rae et al. 2021, section A.1.1), with the thresholds datatrove and FineWeb use, measured
as datatrove measures them.

Words are the word tokenizer's tokens (`text.words_of`: spaCy's English rules, punctuation split off as tokens of
its own). A token made only of punctuation (`text.PUNCTUATION`) is a symbol: the word-count limits and the mean
word length are over the other tokens; the hash and ellipsis ratios and the alphabetic-word ratio divide by all
tokens. Bullet lines start (after spaces) with "•" or "-"; ellipsis lines end (before spaces) with "..." or "…";
both are fractions of `str.splitlines()`. Stop words are looked up among the tokens as they are (case kept).
The per-token work is done once per distinct token the process sees (`text.Words`: tables by token id).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject
from data_pipeline.steps.filters.text import Words, words_of

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("\u2022", "-")  # •, -
# Line boundaries of str.splitlines(); a line "starts with" a bullet when only whitespace comes before it.
_BOUNDARY = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BULLET_LINE = re.compile(rf"(?:\A|[{_BOUNDARY}])\s*[\u2022\-]")
_ELLIPSIS_LINE = re.compile(rf"(?:\.\.\.|\u2026)[^\S{_BOUNDARY}]*(?=[{_BOUNDARY}]|\Z)")


def token_classes(words: Words) -> tuple[int, int, int]:
    """(symbol-free tokens, their characters, tokens with a letter), from per-token tables (numpy gathers)."""
    is_word, has_alpha = words.classes()
    return (
        int(np.count_nonzero(is_word)),
        int(words.lengths()[is_word].sum()),
        int(np.count_nonzero(has_alpha)),
    )


class GopherQuality(FilterStep):
    name = "gopher_quality"

    def __init__(
        self,
        min_words: Optional[int] = 50,
        max_words: Optional[int] = 100_000,
        min_mean_word_length: Optional[float] = 3,
        max_mean_word_length: Optional[float] = 10,
        max_symbol_word_ratio: Optional[float] = 0.1,
        max_bullet_lines_ratio: Optional[float] = 0.9,
        max_ellipsis_lines_ratio: Optional[float] = 0.3,
        min_alpha_words_ratio: Optional[float] = 0.8,
        min_stop_words: Optional[int] = 2,
        stop_words: Sequence[str] = STOP_WORDS,
        language: str = "en",
    ) -> None:
        super().__init__()
        self.min_words = min_words
        self.max_words = max_words
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        if not stop_words:
            raise ValueError("gopher_quality.stop_words: give at least one word (or set min_stop_words: null)")
        self.stop_words = frozenset(stop_words)
        self.language = language

    def filter(self, doc: Document) -> Verdict:
        text = doc.text
        tokens = words_of(text, self.language)
        n_tokens = len(tokens)
        n_words, word_chars, n_alpha = token_classes(tokens)
        if self.min_words is not None and n_words < self.min_words:
            return reject("min_words", n_words, self.min_words)
        if self.max_words is not None and n_words > self.max_words:
            return reject("max_words", n_words, self.max_words)
        if n_words:  # with no word the mean is undefined and neither rule fires (as in datatrove)
            mean_length = word_chars / n_words
            if self.min_mean_word_length is not None and mean_length < self.min_mean_word_length:
                return reject("min_mean_word_length", round(mean_length, 3), self.min_mean_word_length)
            if self.max_mean_word_length is not None and mean_length > self.max_mean_word_length:
                return reject("max_mean_word_length", round(mean_length, 3), self.max_mean_word_length)
        per_token = max(n_tokens, 1)
        if self.max_symbol_word_ratio is not None:
            # Gopher: the ratio of the hash symbol, and of ellipses, to words (datatrove divides by all tokens).
            for rule, count in (
                ("hash_word_ratio", text.count("#")),
                ("ellipsis_word_ratio", text.count("...") + text.count("\u2026")),
            ):
                if count / per_token > self.max_symbol_word_ratio:
                    return reject(rule, round(count / per_token, 4), self.max_symbol_word_ratio)
        n_lines = len(text.splitlines()) or 1
        if self.max_bullet_lines_ratio is not None and any(b in text for b in BULLETS):
            ratio = len(_BULLET_LINE.findall(text)) / n_lines
            if ratio > self.max_bullet_lines_ratio:
                return reject("bullet_lines_ratio", round(ratio, 4), self.max_bullet_lines_ratio)
        if self.max_ellipsis_lines_ratio is not None and ("..." in text or "\u2026" in text):
            ratio = len(_ELLIPSIS_LINE.findall(text)) / n_lines
            if ratio > self.max_ellipsis_lines_ratio:
                return reject("ellipsis_lines_ratio", round(ratio, 4), self.max_ellipsis_lines_ratio)
        if self.min_alpha_words_ratio is not None:
            ratio = n_alpha / per_token
            if ratio < self.min_alpha_words_ratio:
                return reject("alpha_words_ratio", round(ratio, 4), self.min_alpha_words_ratio)
        if self.min_stop_words is not None:
            found = sum(map(tokens.holds, self.stop_words))
            if found < self.min_stop_words:
                return reject("min_stop_words", found, self.min_stop_words)
        return True
