"""Two data-parallel ranks (gloo) with asynchronous checkpoints and a batch ramp: the background saves' collectives
run on their own process group beside the loop's, and the run computes exactly what the synchronous one does."""

from __future__ import annotations

import pytest
from launcher_testing import launch, losses, tiny_overrides

from model.checkpoint_io import verify_checkpoint

pytestmark = pytest.mark.distributed

RAMP = {"trainer.batch_ramp.start": 4, "trainer.batch_ramp.increment": 4, "trainer.batch_ramp.tokens": 32 * 32}


def test_two_ranks_async_with_a_ramp_equal_the_synchronous_run(shards, tmp_path):
    runs = {}
    for mode in ("false", "true"):
        run_dir = tmp_path / f"async_{mode}"
        launch(tiny_overrides(shards, run_dir, **RAMP, **{"trainer.checkpoint_async": mode}), 2, tmp_path)
        runs[mode] = run_dir
    assert losses(runs["true"]) == losses(runs["false"])  # bitwise, every step
    kept = sorted(p.name for p in (runs["true"] / "checkpoints").iterdir())
    assert kept == ["step_00000012", "step_00000016"]
    for name in kept:
        verify_checkpoint(runs["true"] / "checkpoints" / name)
