"""Checkpoints are layout-free: train under FSDP (2 ranks), resume under TP (2 ranks), then in one process,
and every loss and the final weights match one uninterrupted single-process run."""

import atexit
import dataclasses
import shutil
import tempfile
from pathlib import Path

import pytest
from harness import RunSpec, assert_runs_match, plan, planned_result, run_reference, train

pytestmark = pytest.mark.distributed

CKPT = Path(tempfile.mkdtemp(prefix="loom-reshard-"))
atexit.register(shutil.rmtree, CKPT, ignore_errors=True)
LEG = 4  # steps per leg
FSDP_LEG = plan(RunSpec(layout="fsdp", world_size=2, steps=LEG, save_to=str(CKPT / "after_fsdp")))
TP_LEG = plan(
    RunSpec(
        layout="tp",
        world_size=2,
        steps=LEG,
        start_step=LEG,
        load_from=str(CKPT / "after_fsdp"),
        save_to=str(CKPT / "after_tp"),
    )
)


def test_fsdp_to_tp_to_single_process_resume():
    reference = run_reference(RunSpec(steps=3 * LEG))
    fsdp = planned_result(FSDP_LEG)  # the TP leg runs right after it in the same processes
    tp = planned_result(TP_LEG)
    single = train(RunSpec(steps=LEG, start_step=2 * LEG, load_from=str(CKPT / "after_tp")))
    got = dataclasses.replace(single, losses=fsdp.losses + tp.losses + single.losses)
    assert_runs_match(got, reference, rtol=1e-4)
