"""evaluation/token_requests.py against lm-eval 0.4.13's own helpers: rolling windows equal
`map(make_disjoint_window, get_rolling_token_windows(..., context_len=1))` for every length around the window
size, and stop strings cut as `postprocess_generated_text` cuts."""

from __future__ import annotations

import pytest

from evaluation.token_requests import cut_at_stops, rolling_windows


@pytest.mark.parametrize("max_length", [1, 2, 5, 8])
def test_rolling_windows_equal_lm_eval(max_length):
    from lm_eval import utils

    for n in range(4 * max_length + 3):
        tokens = list(range(100, 100 + n))
        expected = list(
            map(
                utils.make_disjoint_window,
                utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=7, max_seq_len=max_length, context_len=1
                ),
            )
        )
        windows = rolling_windows(tokens, 7, max_length)
        assert windows == expected, (n, max_length)
        assert [t for _, pred in windows for t in pred] == tokens  # every token predicted once


def test_cut_at_stops_equals_lm_eval():
    from lm_eval.models import utils as models_utils

    cases = [
        ("a. b\nc", [".", "\n"]),
        ("a\nb. c", [".", "\n"]),
        ("abc", []),
        ("x<|endoftext|>y", ["", "<|e"]),
        ("Question: 2 Answer", ["Question:"]),
    ]
    for text, stops in cases:
        assert cut_at_stops(text, stops) == models_utils.postprocess_generated_text(text, stops, None)
