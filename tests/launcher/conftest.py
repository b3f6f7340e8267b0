"""Fixtures for the launcher tests: a small packed-shard corpus shared by the whole session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Two shards of 'arithmetic progression' documents over a 256-token vocab: learnable in a few steps."""
    from data_pipeline.formats import ShardWriter

    directory = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for s in range(2):
        with ShardWriter(directory, f"part{s}", vocab_size=256, eos_id=0, tokenizer_id="test-arith") as writer:
            for _ in range(150):
                n = int(rng.integers(20, 200))
                start, inc = int(rng.integers(1, 256)), int(rng.integers(1, 5))
                writer.add_document((start + inc * np.arange(n)) % 255 + 1)
    return directory


@pytest.fixture(scope="session")
def single_baseline(shards, tmp_path_factory) -> Path:
    """An uninterrupted 16-step single-process run (checkpoints every 4 steps, the last two kept)."""
    from launcher_testing import run_train, tiny_overrides

    tmp = tmp_path_factory.mktemp("single_baseline")
    result = run_train(tiny_overrides(shards, tmp / "run"), tmp)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return tmp / "run"
