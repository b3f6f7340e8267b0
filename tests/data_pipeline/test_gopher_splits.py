"""Gopher repetition's paragraph and line splits (plain `str.split`s) are the regex splits datatrove makes."""

from __future__ import annotations

import random
import re

from data_pipeline.steps.filters.gopher_repetition import lines, paragraphs


def test_paragraph_and_line_splits_are_the_regex_splits():
    rng = random.Random(3)
    texts = ["", "\n", "\n\n", "a", "a\n", "\na", "a\n\n\nb\n", " \n\na\n\n \n"]
    texts += ["".join(rng.choice("ab \n") for _ in range(rng.randint(0, 16))) for _ in range(5000)]
    for text in texts:
        assert paragraphs(text) == re.split(r"\n{2,}", text.strip()), repr(text)
        assert lines(text) == re.split(r"\n+", text), repr(text)
