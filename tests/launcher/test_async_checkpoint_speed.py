"""The issue's check of asynchronous checkpoints, on GPT-2 124M on CPU: the loop is blocked by an asynchronous
save for under a tenth of the time a synchronous save blocks it (benchmarks/bench_checkpoint.py; minutes, so
marked slow: tests/launcher/test_async_checkpoint.py covers the same path on the tiny model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

pytestmark = pytest.mark.slow


def test_async_save_blocks_the_loop_under_a_tenth_of_a_synchronous_save(tmp_path):
    from bench_checkpoint import run_bench

    report = run_bench([], tmp_path)
    assert report["checkpoint_gib"] > 1.0  # weights and AdamW moments of 124M parameters
    assert report["async_over_sync"] < 0.1, report
