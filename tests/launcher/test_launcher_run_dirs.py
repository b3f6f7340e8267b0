"""Run directories as Hydra users expect: a multirun sweep gives every job its own run dir (each trains to its last
step), a run dir holding a different run is refused unless the change is allowed (and an allowed lr change takes
effect), a MoE run logs its auxiliary losses, and a multi-token-prediction run logs its loss and resumes exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from launcher_testing import PYTHON, child_env, run_train, tiny_overrides


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_multirun_sweep_trains_each_job_in_its_own_run_dir(shards, tmp_path):
    overrides = [
        o for o in tiny_overrides(shards, tmp_path / "unused", max_steps=12) if not o.startswith("trainer.run_dir=")
    ]
    result = subprocess.run(
        [PYTHON, "-m", "launcher.train", "-m", "optim.lr=1e-3,3e-3", *overrides],
        cwd=tmp_path,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs").glob("loom-sweep-*"))
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    losses = []
    for job, lr in zip(jobs, (1e-3, 3e-3)):
        logged = [r for r in records(job) if "loss" in r]
        assert [r["step"] for r in logged] == list(range(1, 13)), f"{job} did not train every step"
        assert max(r["lr"] for r in logged) == lr
        assert (job / "checkpoints" / "step_00000012" / "COMPLETE").exists()
        losses.append([r["loss"] for r in logged])
    assert losses[0] != losses[1] and losses[0][0] == losses[1][0]  # same start, then the lr shows


def test_run_dir_of_another_run_is_refused_unless_the_change_is_allowed(shards, tmp_path):
    run_dir = tmp_path / "run"
    first = run_train(tiny_overrides(shards, run_dir, max_steps=4), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    changed = run_train(tiny_overrides(shards, run_dir, max_steps=8) + ["optim.lr=1e-2", "trainer.seed=7"], tmp_path)
    assert changed.returncode == 2
    assert "holds a different run" in changed.stderr
    assert "optim.lr: 0.003 -> 0.01" in changed.stderr and "trainer.seed: 1337 -> 7" in changed.stderr
    assert "trainer.resume_allow=[optim.lr,trainer.seed]" in changed.stderr
    assert [r["step"] for r in records(run_dir)][-1] == 4  # untouched

    allowed = run_train(
        tiny_overrides(shards, run_dir, max_steps=8) + ["optim.lr=1e-2", "trainer.resume_allow=[optim.lr]"], tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "resumed from" in allowed.stdout + allowed.stderr
    logged = {r["step"]: r for r in records(run_dir) if "loss" in r}
    assert sorted(logged) == list(range(1, 9))
    # Steps 1-4 ran at peak lr 3e-3; from step 5 the cosine schedule takes the new peak 1e-2 (7.75e-3 at step 5).
    assert logged[4]["lr"] < 3e-3 + 1e-12 and logged[5]["lr"] > 3e-3


def test_moe_run_logs_its_auxiliary_losses(shards, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(
        tiny_overrides(shards, run_dir, max_steps=3) + ["model=mixtral_tiny", "model.moe.expert_hidden_dim=16"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [r for r in records(run_dir) if "loss" in r]
    assert len(logged) == 3
    for record in logged:
        assert 0.5 < record["moe_aux_loss"] < 4.0, record  # Switch loss: 1 when balanced
        assert record["moe_router_z_loss"] > 0, record


def test_multi_token_prediction_run_logs_its_loss_and_resumes(shards, tmp_path):
    """model.mtp_depth=1 through the launcher: mtp_loss logged at every step and falling, a held-out loss, and a
    run resumed from step 3 (MTP weights and optimizer state from the checkpoint) repeats steps 4-6 bit for bit."""

    def overrides(run_dir):
        return tiny_overrides(shards, run_dir, max_steps=6) + [
            "model.mtp_depth=1",
            "trainer.checkpoint_every=3",
            "trainer.eval_every=3",
            "trainer.eval_batches=1",
        ]

    finished = tmp_path / "finished"
    result = run_train(overrides(finished), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    want = {r["step"]: r for r in records(finished) if "loss" in r}
    assert sorted(want) == list(range(1, 7))
    assert all(r["mtp_loss"] > 0 for r in want.values()) and want[6]["mtp_loss"] < want[1]["mtp_loss"]
    assert any("val_loss" in r for r in records(finished))

    run_dir = tmp_path / "resumed"
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_00000006")
    resumed = run_train(overrides(run_dir), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    got = {r["step"]: r for r in records(run_dir) if "loss" in r}
    for step in (4, 5, 6):
        assert (got[step]["loss"], got[step]["mtp_loss"]) == (want[step]["loss"], want[step]["mtp_loss"]), step
