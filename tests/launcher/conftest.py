"""Fixtures for the launcher tests: a small packed-shard corpus shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Two shards of 'arithmetic progression' documents over a 256-token vocab: learnable in a few steps."""
    from data_pipeline.synthetic import write_arithmetic_shards

    return write_arithmetic_shards(tmp_path_factory.mktemp("shards"), "test-arith")


@pytest.fixture(scope="session")
def single_baseline(shards, tmp_path_factory) -> Path:
    """An uninterrupted 16-step single-process run (checkpoints every 4 steps, the last two kept)."""
    from launcher_testing import run_train, tiny_overrides

    tmp = tmp_path_factory.mktemp("single_baseline")
    result = run_train(tiny_overrides(shards, tmp / "run"), tmp)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return tmp / "run"
