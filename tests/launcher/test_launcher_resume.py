"""Exact resume: a run stopped at step k (SIGTERM, or kill -9 after a checkpoint) and resumed with
trainer.resume=auto gives bitwise the same loss at every later step as an uninterrupted run (CPU, fp32)."""

from __future__ import annotations

import signal

import pytest
from launcher_testing import checkpoint_complete, losses, run_train, start_train, tiny_overrides, wait_for

MAX_STEPS = 16


def complete_steps(run_dir) -> list[int]:
    return sorted(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_interrupted_run_resumes_bitwise(sig, shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(tiny_overrides(shards, run_dir), tmp_path, "interrupted.log")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 150, "the step-4 checkpoint", [proc])
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "interrupted.log").read_text()
    stopped_at = complete_steps(run_dir)[-1]
    if sig == signal.SIGTERM:
        assert rc == 0, log[-3000:]
        assert "stop requested (SIGTERM)" in log
        # The stop checkpoint is the step the signal arrived in, not a scheduled one at the end.
        assert 4 <= stopped_at < MAX_STEPS, f"run was not stopped mid-way (last checkpoint {stopped_at})"
    else:
        assert rc == -signal.SIGKILL
        assert stopped_at < MAX_STEPS, f"run finished before the kill (last checkpoint {stopped_at})"

    result = run_train(tiny_overrides(shards, run_dir), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped_at:08d}'}" in result.stdout + result.stderr

    want, got = losses(single_baseline), losses(run_dir)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    for step in range(stopped_at + 1, MAX_STEPS + 1):
        assert got[step] == want[step], f"step {step}: resumed loss {got[step]!r} != uninterrupted {want[step]!r}"


def test_init_from_loads_weights_but_not_the_training_state(shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(shards, run_dir, max_steps=3) + [f"trainer.init_from={single_baseline}"]
    result = run_train(overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"initialised model weights from {single_baseline / 'checkpoints' / 'step_00000016'}" in result.stdout
    got, base = losses(run_dir), losses(single_baseline)
    assert sorted(got) == [1, 2, 3]  # the step count starts again
    assert got[1] < base[1] - 0.3, (got[1], base[1])  # but from trained weights, not a fresh init


def test_stop_signal_before_the_first_step_saves_and_resumes(shards, single_baseline, tmp_path):
    """USR1 while the run is still starting (data, model, process groups: seconds on a cluster) is kept, not fatal:
    the run saves at its first step, exits 0, and resumes from there bitwise."""
    run_dir = tmp_path / "run"
    proc = start_train(tiny_overrides(shards, run_dir), tmp_path, "early.log")
    try:
        wait_for(lambda: "trainer.run_dir=" in (tmp_path / "early.log").read_text(), 120, "the run to start", [proc])
        proc.send_signal(signal.SIGUSR1)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "early.log").read_text()
    assert rc == 0, log[-3000:]
    assert "stop requested (SIGUSR1)" in log and "Traceback" not in log
    stopped_at = complete_steps(run_dir)[-1]
    assert stopped_at < MAX_STEPS
    result = run_train(tiny_overrides(shards, run_dir), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    want, got = losses(single_baseline), losses(run_dir)
    assert all(got[step] == want[step] for step in range(1, MAX_STEPS + 1)), (got, want)


def test_muon_run_killed_after_a_checkpoint_resumes_bitwise(shards, tmp_path):
    """optim=muon: Muon's momentum and AdamW's moments (one checkpoint, by parameter name) resume exactly."""
    muon = {"optim": "muon"}
    baseline = tmp_path / "baseline"
    result = run_train(tiny_overrides(shards, baseline, **muon), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "run"
    proc = start_train(tiny_overrides(shards, run_dir, **muon), tmp_path, "killed.log")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 150, "the step-4 checkpoint", [proc])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped_at = complete_steps(run_dir)[-1]
    assert stopped_at < MAX_STEPS, f"run finished before the kill (last checkpoint {stopped_at})"
    result = run_train(tiny_overrides(shards, run_dir, **muon), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    want, got = losses(baseline), losses(run_dir)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    for step in range(stopped_at + 1, MAX_STEPS + 1):
        assert got[step] == want[step], f"step {step}: resumed loss {got[step]!r} != uninterrupted {want[step]!r}"
