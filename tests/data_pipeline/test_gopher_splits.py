"""Gopher repetition's faster parts give what the slower ones gave: paragraph and line splits (plain `str.split`s)
are the regex splits datatrove makes, and key groups from one unstable sort are `np.unique`'s."""

from __future__ import annotations

import random
import re

import numpy as np

from data_pipeline.steps.filters.gopher_repetition import Groups, lines, paragraphs


def test_paragraph_and_line_splits_are_the_regex_splits():
    rng = random.Random(3)
    texts = ["", "\n", "\n\n", "a", "a\n", "\na", "a\n\n\nb\n", " \n\na\n\n \n"]
    texts += ["".join(rng.choice("ab \n") for _ in range(rng.randint(0, 16))) for _ in range(5000)]
    for text in texts:
        assert paragraphs(text) == re.split(r"\n{2,}", text.strip()), repr(text)
        assert lines(text) == re.split(r"\n+", text), repr(text)


def test_groups_give_what_np_unique_gives():
    rng = np.random.default_rng(0)
    for size in [1, 2, 3, 10, 100, 5000]:
        for distinct in [1, 2, max(1, size // 3), size]:
            keys = rng.integers(0, distinct, size=size).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
            groups = Groups(keys)
            assert groups.first().tolist() == first.tolist()
            assert groups.counts.tolist() == counts.tolist()
            assert groups.occurrences().tolist() == counts[inverse].tolist()
    empty = Groups(np.zeros(0, dtype=np.uint64))
    assert empty.counts.tolist() == [] and empty.occurrences().tolist() == []
