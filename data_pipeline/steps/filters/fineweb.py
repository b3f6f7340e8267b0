"""FineWeb's own rules (Penedo et al. 2024, section 3.3), with the thresholds of its release.

Over the lines that are not blank: the fraction ending in sentence-terminal punctuation (datatrove's list,
`text.TERMINAL_PUNCTUATION`; the line's last character, spaces not stripped) must reach `min_line_punct_ratio`;
the fraction of lines of at most `short_line_length` characters must not exceed `max_short_line_ratio`; the
characters of lines repeating an earlier line, over the characters of the text without newlines, must not exceed
`max_dup_line_char_ratio`; newlines per word must not exceed `max_newline_word_ratio` (words: the word
tokenizer's tokens, `text.words_of`, punctuation included, as datatrove counts them).
"""

from __future__ import annotations

from typing import Optional

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject
from data_pipeline.steps.filters.text import TERMINAL_PUNCTUATION, duplicated, words_of


class FineWeb(FilterStep):
    name = "fineweb"

    def __init__(
        self,
        min_line_punct_ratio: Optional[float] = 0.12,
        line_punct_exclude_zero: bool = False,
        max_short_line_ratio: Optional[float] = 0.67,
        short_line_length: int = 30,
        max_dup_line_char_ratio: Optional[float] = 0.01,
        max_newline_word_ratio: Optional[float] = 0.3,
        language: str = "en",
    ) -> None:
        super().__init__()
        self.min_line_punct_ratio = min_line_punct_ratio
        self.line_punct_exclude_zero = line_punct_exclude_zero
        self.max_short_line_ratio = max_short_line_ratio
        self.short_line_length = short_line_length
        self.max_dup_line_char_ratio = max_dup_line_char_ratio
        self.max_newline_word_ratio = max_newline_word_ratio
        self.language = language

    def filter(self, doc: Document) -> Verdict:
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return reject("no_lines", 0, 1)
        if self.min_line_punct_ratio is not None:
            terminals = TERMINAL_PUNCTUATION
            ratio = sum(1 for line in lines if line[-1] in terminals) / len(lines)
            if ratio < self.min_line_punct_ratio and not (ratio == 0 and self.line_punct_exclude_zero):
                return reject("line_punct_ratio", round(ratio, 4), self.min_line_punct_ratio)
        if self.max_short_line_ratio is not None:
            limit = self.short_line_length
            ratio = sum(1 for line in lines if len(line) <= limit) / len(lines)
            if ratio > self.max_short_line_ratio:
                return reject("short_line_ratio", round(ratio, 4), self.max_short_line_ratio)
        if self.max_dup_line_char_ratio is not None:
            ratio = duplicated(lines)[1] / max(len(text) - text.count("\n"), 1)
            if ratio > self.max_dup_line_char_ratio:
                return reject("dup_line_char_ratio", round(ratio, 4), self.max_dup_line_char_ratio)
        if self.max_newline_word_ratio is not None:
            ratio = text.count("\n") / max(len(words_of(text, self.language)), 1)
            if ratio > self.max_newline_word_ratio:
                return reject("newline_word_ratio", round(ratio, 4), self.max_newline_word_ratio)
        return True
