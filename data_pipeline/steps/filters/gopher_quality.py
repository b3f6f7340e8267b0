"""Gopher's quality rules (Rae et al. 2021, section A.1.1), with the thresholds datatrove and FineWeb use.

Words are whitespace tokens; tokens with no letter or digit ("-", "|", "...") are symbols, left out of the word
count and the mean word length as datatrove leaves out punctuation tokens. Punctuation glued to a word counts
in its length (datatrove's tokenizers split it off): the mean reads ~0.15 higher on prose. Stop words are matched
as whole lower-case words, as datatrove matches its tokens. Every measurement is one regex or C-level pass.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject
from data_pipeline.steps.filters.text import words_of

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = "\u2022\u2023\u25e6\u2043\u25cf*-"  # •‣◦⁃● * -

_WORD_CHAR = re.compile(r"\w").search
_LETTER = re.compile(r"[^\W\d_]").search


def symbol_and_letterless_tokens(tokens: list[str]) -> tuple[list[str], int]:
    """(tokens with no letter, digit or underscore; the number of tokens with no letter). Most tokens are all
    letters (`str.isalpha`, C speed); only the rest are searched."""
    symbols: list[str] = []
    letterless = 0
    for token in tokens:
        if token.isalpha():
            continue
        if _WORD_CHAR(token) is None:
            symbols.append(token)
            letterless += 1
        elif _LETTER(token) is None:
            letterless += 1
    return symbols, letterless


_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|\u2026)[ \t]*$", re.MULTILINE)


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
        self.stop_words = tuple(stop_words)
        self._stop_word = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, self.stop_words)) + r")(?!\w)")
        self._bullet_line = re.compile(r"^[ \t]*[" + re.escape(BULLETS) + "]", re.MULTILINE)

    def filter(self, doc: Document) -> Verdict:
        text = doc.text
        tokens = words_of(text)
        symbols, letterless = symbol_and_letterless_tokens(tokens)
        n_words = len(tokens) - len(symbols)
        if self.min_words is not None and n_words < self.min_words:
            return reject("min_words", n_words, self.min_words)
        if self.max_words is not None and n_words > self.max_words:
            return reject("max_words", n_words, self.max_words)
        mean_length = (sum(map(len, tokens)) - sum(map(len, symbols))) / max(n_words, 1)
        if self.min_mean_word_length is not None and mean_length < self.min_mean_word_length:
            return reject("min_mean_word_length", round(mean_length, 3), self.min_mean_word_length)
        if self.max_mean_word_length is not None and mean_length > self.max_mean_word_length:
            return reject("max_mean_word_length", round(mean_length, 3), self.max_mean_word_length)
        if self.max_symbol_word_ratio is not None:
            # Gopher: the ratio of the hash symbol, and of ellipses, to words (datatrove divides by all tokens).
            for rule, count in (
                ("hash_word_ratio", text.count("#")),
                ("ellipsis_word_ratio", text.count("...") + text.count("\u2026")),
            ):
                if count / max(len(tokens), 1) > self.max_symbol_word_ratio:
                    return reject(rule, round(count / max(len(tokens), 1), 4), self.max_symbol_word_ratio)
        n_lines = len(text.splitlines()) or 1
        if self.max_bullet_lines_ratio is not None and any(b in text for b in BULLETS):
            ratio = len(self._bullet_line.findall(text)) / n_lines
            if ratio > self.max_bullet_lines_ratio:
                return reject("bullet_lines_ratio", round(ratio, 4), self.max_bullet_lines_ratio)
        if self.max_ellipsis_lines_ratio is not None and ("..." in text or "\u2026" in text):
            ratio = len(_ELLIPSIS_LINE.findall(text)) / n_lines
            if ratio > self.max_ellipsis_lines_ratio:
                return reject("ellipsis_lines_ratio", round(ratio, 4), self.max_ellipsis_lines_ratio)
        if self.min_alpha_words_ratio is not None:
            ratio = 1 - letterless / max(len(tokens), 1)
            if ratio < self.min_alpha_words_ratio:
                return reject("alpha_words_ratio", round(ratio, 4), self.min_alpha_words_ratio)
        if self.min_stop_words is not None:
            found = set()
            for match in self._stop_word.finditer(text):
                found.add(match.group())
                if len(found) >= self.min_stop_words:
                    break
            if len(found) < self.min_stop_words:
                return reject("min_stop_words", len(found), self.min_stop_words)
        return True
