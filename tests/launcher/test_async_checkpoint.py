"""Asynchronous checkpoints (trainer.checkpoint_async=true): the loop waits only for the host copy, the save keeps
every guarantee of a synchronous one, and a run killed mid-write resumes from the previous checkpoint bitwise.

Three runs of the tiny model (CPU, fp32) against the synchronous baseline, and two in-process checks of the
Checkpointer (a failure in the background is raised at the next wait; at most one save in flight)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from launcher_testing import checkpoint_complete, losses, run_train, start_train, tiny_overrides, wait_for

from launcher.checkpoint import Checkpointer
from launcher.distributed import DistEnv
from model.checkpoint_io import verify_checkpoint

MAX_STEPS = 16
ASYNC = {"trainer.checkpoint_async": "true"}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def last_logged_step(run_dir: Path) -> int:
    """The newest step in metrics.jsonl while the run writes it (0 before the first whole line)."""
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    whole = [line for line in lines if line.endswith("\n")]
    return json.loads(whole[-1])["step"] if whole else 0


def test_async_run_equals_the_synchronous_one_and_logs_its_timings(shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(tiny_overrides(shards, run_dir, **ASYNC), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert losses(run_dir) == losses(single_baseline)  # every step, bitwise
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["step_00000012", "step_00000016"]  # pruned after read-back, no temporary left
    for name in kept:
        verify_checkpoint(run_dir / "checkpoints" / name)
    logged = [r for r in records(run_dir) if "checkpoint/blocked_s" in r]
    assert [r["step"] for r in logged] == [5, 9, 13]  # each save's figures join the next logged record
    assert all(r["checkpoint/blocked_s"] > 0 for r in logged)
    assert sum("checkpoint/write_s" in r for r in records(run_dir)) >= 2
    assert "checkpoint step 16: written in the background" in result.stdout + result.stderr


def test_kill9_during_an_async_write_resumes_from_the_previous_checkpoint(shards, single_baseline, tmp_path):
    """The save of step 8 stalls after DCP's write, before its manifest; training goes on meanwhile (steps 9-12
    are logged) until the save of step 12 waits for it; kill -9 then. The relaunch resumes from step 4, removes the
    partial save and continues bitwise."""
    run_dir = tmp_path / "run"
    stalled = run_dir / "checkpoints" / ".tmp-step_00000008"
    proc = start_train(
        tiny_overrides(shards, run_dir, **ASYNC), tmp_path, "killed.log", LOOM_TEST_STALL_ASYNC_SAVE_AT_STEP="8"
    )
    try:
        wait_for(
            lambda: last_logged_step(run_dir) >= 12,
            150,
            "step 12 while the save of step 8 is in flight",
            [proc],
        )
        assert (stalled / ".metadata").is_file() and not checkpoint_complete(run_dir, 8)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert checkpoint_complete(run_dir, 4) and not (run_dir / "checkpoints" / "step_00000008").exists()

    result = run_train(tiny_overrides(shards, run_dir, **ASYNC), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000004'}" in result.stdout + result.stderr
    assert not stalled.exists()
    want, got = losses(single_baseline), losses(run_dir)
    for step in range(5, MAX_STEPS + 1):
        assert got[step] == want[step], f"step {step}: resumed loss {got[step]!r} != uninterrupted {want[step]!r}"


def test_stop_signal_waits_for_the_async_save_and_resumes_bitwise(shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(tiny_overrides(shards, run_dir, **ASYNC), tmp_path, "stopped.log")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 150, "the step-4 checkpoint", [proc])
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "stopped.log").read_text()
    assert rc == 0 and "stop requested (SIGTERM)" in log, log[-3000:]
    stopped_at = max(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))
    assert f"saved checkpoint {run_dir / 'checkpoints' / f'step_{stopped_at:08d}'}" in log  # published before exit
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    result = run_train(tiny_overrides(shards, run_dir, **ASYNC), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    want, got = losses(single_baseline), losses(run_dir)
    assert all(got[step] == want[step] for step in range(stopped_at + 1, MAX_STEPS + 1)), (got, want)


# ------------------------------------------------------------------------------------------ in process
class _Module:
    """The train-module surface the Checkpointer saves: a weight and an optimizer moment, changed in place."""

    def __init__(self) -> None:
        from model.config import ModelConfig

        self.weight = torch.zeros(4, 4)
        self.moment = torch.zeros(4, 4)
        self.cfg = SimpleNamespace(model=ModelConfig())

    def state_dict(self) -> dict:
        return {"model": {"w": self.weight}, "optimizer": {"m": self.moment}, "schedule": {"step": 0}}

    def save_native(self, directory: Path) -> None:
        pass


class _Loader:
    def state_dict(self) -> dict:
        return {"samples": 0}

    def fingerprint(self) -> str:
        return "test"

    def decontamination(self) -> None:
        return None


def _checkpointer(tmp_path: Path) -> Checkpointer:
    return Checkpointer(tmp_path, DistEnv(0, 0, 1, torch.device("cpu")), keep=0, async_save=True)


def test_async_save_snapshots_the_state_and_keeps_one_save_in_flight(tmp_path):
    from model.checkpoint_io import load_tensors

    checkpointer, module = _checkpointer(tmp_path), _Module()
    module.weight.fill_(1.0)
    checkpointer.save(1, module, _Loader(), {})
    module.weight.fill_(2.0)  # training goes on while step 1 is written: its checkpoint keeps the staged 1.0
    checkpointer.save(2, module, _Loader(), {})  # waits for step 1 first
    assert (tmp_path / "checkpoints" / "step_00000001" / "COMPLETE").is_file()
    checkpointer.close()
    for step, value in ((1, 1.0), (2, 2.0)):
        state = {"model": {"w": torch.empty(4, 4)}}
        load_tensors(state, tmp_path / "checkpoints" / f"step_{step:08d}", no_dist=True)
        assert torch.equal(state["model"]["w"], torch.full((4, 4), value))
    assert checkpointer.last_saved_step == 2
    assert set(checkpointer.pop_figures()) == {"checkpoint/blocked_s", "checkpoint/write_s"}


def test_a_failed_background_write_is_raised_at_the_next_wait(tmp_path, monkeypatch):
    import launcher.checkpoint as checkpoint

    def fail(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(checkpoint, "publish_checkpoint", fail)
    checkpointer = _checkpointer(tmp_path)
    checkpointer.save(3, _Module(), _Loader(), {})  # returns while the write goes on
    with pytest.raises(OSError, match="disk went away"):
        checkpointer.wait()
    assert not list((tmp_path / "checkpoints").iterdir())  # the partial save is gone, nothing half-published
    assert checkpointer.last_saved_step is None
