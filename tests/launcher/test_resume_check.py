"""The pre-process-group check of what a layout can resume: a checkpoint whose optimizer state is not in the
common by-name format (Loom's earlier ZeRO checkpoints kept it in DeepSpeed's native files) is refused with the
directory and what to do; common-format checkpoints, resume=never and empty run dirs pass."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
from launcher_testing import run_train, tiny_overrides

from launcher.resume_check import ResumeFormatError, check_resumable
from model.checkpoint_io import COMPLETE_MARKER, single_process_dcp


def write_checkpoint(run_dir, step: int, *, optimizer: bool, native: bool = False):
    directory = run_dir / "checkpoints" / f"step_{step:08d}"
    directory.mkdir(parents=True)
    state = {"model": {"w": torch.ones(2)}}
    if optimizer:
        state["optimizer"] = {"state.w.exp_avg": torch.zeros(2), "state.w.step": torch.tensor(3.0)}
    with single_process_dcp():
        dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    if native:
        (directory / "deepspeed" / "state").mkdir(parents=True)
    (directory / COMPLETE_MARKER).write_text("{}")
    return directory


def test_native_zero_checkpoint_is_refused_naming_it_and_the_way_out(tmp_path):
    write_checkpoint(tmp_path, 2, optimizer=True)
    newest = write_checkpoint(tmp_path, 4, optimizer=False, native=True)
    with pytest.raises(ResumeFormatError) as refused:
        check_resumable(tmp_path, "auto", "fsdp")
    message = str(refused.value)
    assert str(newest) in message and "parallel=fsdp" in message
    assert "DeepSpeed's native files" in message and f"trainer.init_from={newest}" in message


def test_common_format_and_nothing_to_resume_pass(tmp_path):
    check_resumable(tmp_path, "auto", "zero2")  # no checkpoints
    write_checkpoint(tmp_path, 4, optimizer=False, native=True)
    check_resumable(tmp_path, "never", "zero2")  # the old checkpoints are set aside, not resumed
    write_checkpoint(tmp_path, 6, optimizer=True)
    check_resumable(tmp_path, "auto", "zero3")


def test_launcher_refuses_before_any_process_group(shards, tmp_path):
    run_dir = tmp_path / "run"
    newest = write_checkpoint(run_dir, 4, optimizer=False, native=True)
    result = run_train(tiny_overrides(shards, run_dir), tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"config error: {newest} cannot be resumed by parallel=single" in result.stderr
    assert "Traceback" not in result.stderr
