"""Training through a real Slurm (tests/local_slurm.py): `python -m launcher.submit` jobs and slurm/train.sbatch by
hand run to COMPLETED with the losses of a local `torchrun --nproc_per_node=2` run of the same overrides (one
OpenMP thread per rank); a USR1 warning, `scontrol requeue` (SIGTERM) and a time limit each lead to a checkpoint,
one requeue and a resume that ends with the uninterrupted run's losses, without a traceback in the job log; two
jobs share the node at once; a requeued job keeps logging to one wandb run.

The tiny run takes well under a second of training, so the preemption tests freeze its rank processes (SIGSTOP) once
they can take a stop signal, send it, and thaw them once the node launcher has passed it on: the signal then lands
mid-run however loaded the machine is. The three preemption scenarios run at once (one CPU per job), since most of their
time is spent waiting for Slurm.
"""

from __future__ import annotations

import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from launcher_testing import PYTHON, REPO, child_env, losses
from slurm_jobs import MAX_STEPS, Frozen, job_env, job_log, job_overrides, logged_steps, submit, wait_until

from cluster.config import local_cpus

pytestmark = pytest.mark.distributed
RANKS = 2
ONE_CPU_JOB = ["cluster=local_cpu", "cluster.cpus_per_task=1", f"cluster.ranks_per_node={RANKS}"]


@pytest.fixture(scope="module")
def torchrun_baseline(shards, tmp_path_factory) -> dict[int, float]:
    """The uninterrupted run, launched locally: torchrun --standalone --nproc_per_node=2, OMP_NUM_THREADS=1."""
    tmp = tmp_path_factory.mktemp("torchrun_baseline")
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={RANKS}",
        "-m",
        "launcher.train",
        *job_overrides(shards, "baseline"),
        f"trainer.run_dir={tmp / 'run'}",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=child_env(tmp), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    got = losses(tmp / "run")
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    return got


def assert_clean_log(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]
    assert "srun: error" not in text, text[-4000:]


def assert_same_losses(run_dir: Path, baseline: dict[int, float]) -> None:
    got = losses(run_dir)
    assert sorted(got) == list(range(1, MAX_STEPS + 1)), sorted(got)
    for step in range(1, MAX_STEPS + 1):
        assert got[step] == baseline[step], f"step {step}: {got[step]!r} under Slurm, {baseline[step]!r} torchrun"


def test_slurm_submit_local_cpu_matches_torchrun(slurm, shards, torchrun_baseline, tmp_path):
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    overrides = ["cluster=local_cpu", "cluster.nodes=1", *job_overrides(shards, "plain")]
    if local_cpus() != RANKS:  # local_cpu runs one rank per CPU: pin the baseline's 2 on bigger machines
        overrides.append(f"cluster.ranks_per_node={RANKS}")
    job = submit(slurm, overrides, cwd, job_env(slurm, tmp_path))
    assert job.run_dir == cwd / "outputs" / "plain"  # named after the job, under the submitting directory
    assert (job.run_dir / "slurm_job.sbatch").read_text().startswith("#!/bin/bash")
    info = slurm.wait(job.job_id, 300)
    log = job_log(job.log)
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "0", "0:0"), log[-3000:]
    assert f"{RANKS} rank(s), 1 thread(s) each" in log
    assert_clean_log(log)
    assert_same_losses(job.run_dir, torchrun_baseline)


def _times(info: dict[str, str]) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(info["StartTime"]), datetime.fromisoformat(info["EndTime"])


def test_slurm_two_jobs_at_once_from_other_directories(slurm, shards, torchrun_baseline, tmp_path):
    """One job from launcher.submit, one from slurm/train.sbatch by hand, each from its own directory outside the
    checkout, sharing the node: both complete, at the same time, on different rendezvous ports."""
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    dir_a.mkdir()
    dir_b.mkdir()
    env = job_env(slurm, tmp_path)
    job_a = submit(slurm, [*ONE_CPU_JOB, *job_overrides(shards, "pair_a")], dir_a, env)
    by_hand = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--cpus-per-task=1",
            "--mem=2G",
            "--job-name=pair_b",
            str(REPO / "slurm" / "train.sbatch"),
            *job_overrides(shards, "pair_b"),
        ],
        cwd=dir_b,
        env={**env, "LOOM_REPO": str(REPO), "LOOM_RANKS_PER_NODE": str(RANKS)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert by_hand.returncode == 0, by_hand.stderr
    job_b = by_hand.stdout.strip().split(";")[0]
    info_a, info_b = slurm.wait(job_a.job_id, 300), slurm.wait(job_b, 300)
    log_a, log_b = job_log(job_a.log), job_log(dir_b / f"pair_b-{job_b}.out")
    assert info_a["JobState"] == "COMPLETED", log_a[-3000:]
    assert info_b["JobState"] == "COMPLETED", log_b[-3000:]
    (start_a, end_a), (start_b, end_b) = _times(info_a), _times(info_b)
    assert start_a < end_b and start_b < end_a, f"the jobs did not overlap: {info_a} {info_b}"
    ports = [re.search(r"rendezvous \S+:(\d+)", log).group(1) for log in (log_a, log_b)]
    assert ports[0] != ports[1]
    for log in (log_a, log_b):
        assert_clean_log(log)
    assert_same_losses(job_a.run_dir, torchrun_baseline)
    assert_same_losses(dir_b / "outputs" / "pair_b", torchrun_baseline)  # the template's default run dir


# ---------------------------------------------------------------------------------------------- preemption
def _runtime_s(value: str) -> int:
    days, _, clock = value.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 3600 + m * 60 + s


def _preempt_with_usr1(slurm, job) -> None:
    """What Slurm's --signal=B:USR1 does before a preemption, sent by hand."""
    with Frozen(job.run_dir, RANKS):
        slurm.run("scancel", "--batch", "--signal=USR1", job.job_id)
        wait_until(lambda: "closing signal SIGUSR1" in job_log(job.log), 60, "the node launcher passing USR1 on")


def _requeue_with_sigterm(slurm, job) -> None:
    with Frozen(job.run_dir, RANKS):
        slurm.run("scontrol", "requeue", job.job_id)
        wait_until(lambda: "closing signal SIGTERM" in job_log(job.log), 30, "the node launcher passing TERM on")


def _reach_time_limit(slurm, job) -> None:
    """Shorten the running job's limit so Slurm's periodic time-limit check (every 30 s) sends the --signal
    warning (120 s ahead) at its next pass, with the limit itself still >= 5 s away; restore it once the job has
    requeued itself, or the resumed run would be warned again."""
    with Frozen(job.run_dir, RANKS):
        elapsed = _runtime_s(slurm.job(job.job_id)["RunTime"])
        minutes = math.ceil((elapsed + 36) / 60)
        slurm.run("scontrol", "update", f"JobId={job.job_id}", f"TimeLimit={minutes}")
        wait_until(lambda: "closing signal SIGUSR1" in job_log(job.log), 90, "the time-limit warning")
    wait_until(lambda: int(slurm.job(job.job_id)["Restarts"]) >= 1, 120, "the requeue")
    slurm.run("scontrol", "update", f"JobId={job.job_id}", "TimeLimit=10")


def ranks_ready(job) -> bool:
    """Every rank has its stop handler: rank 0 prints the run dir after the process group formed, and each rank
    installs the handler before joining it. Freezing from here on, the signal always finds the run unfinished."""
    return logged_steps(job.run_dir) > 0 or f"trainer.run_dir={job.run_dir}" in job_log(job.log)


SCENARIOS = {"usr1": _preempt_with_usr1, "sigterm": _requeue_with_sigterm, "time_limit": _reach_time_limit}


@pytest.fixture(scope="module")
def preempted(slurm, shards, tmp_path_factory):
    """The three preemptions, each its own job (the USR1 one logging to wandb offline), run at once."""
    tmp = tmp_path_factory.mktemp("preempted")
    env = job_env(slurm, tmp, WANDB_MODE=None, WANDB_DIR=None)  # the run's own wandb dir, mode from the config
    jobs = {}
    for name in SCENARIOS:
        extra = {"logging.wandb.mode": "offline"} if name == "usr1" else {}
        time_limit = ["cluster.time=10"] if name == "time_limit" else []
        jobs[name] = submit(slurm, [*ONE_CPU_JOB, *time_limit, *job_overrides(shards, name, **extra)], tmp, env)

    def play(name):
        job = jobs[name]
        wait_until(lambda: ranks_ready(job), 300, f"{name}: the ranks' signal handlers", slurm, job.job_id)
        SCENARIOS[name](slurm, job)
        return slurm.wait(job.job_id, 300)

    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        futures = {name: pool.submit(play, name) for name in SCENARIOS}
        outcomes = {}
        for name, future in futures.items():
            try:
                outcomes[name] = (jobs[name], future.result(), None)
            except Exception as exc:  # noqa: BLE001 - reported by that scenario's test
                outcomes[name] = (jobs[name], None, exc)
    return outcomes


@pytest.mark.parametrize(
    "scenario, signal_name", [("usr1", "SIGUSR1"), ("sigterm", "SIGTERM"), ("time_limit", "SIGUSR1")]
)
def test_slurm_preemption_checkpoints_requeues_and_resumes(preempted, torchrun_baseline, scenario, signal_name):
    job, info, error = preempted[scenario]
    log = job_log(job.log)
    if error is not None:
        raise AssertionError(f"{scenario}: {error}\n--- job log\n{log[-4000:]}") from error
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    stops = re.findall(r"stop requested \((\w+)\): saved step (\d+)", log)
    assert stops and {s for s, _ in stops} == {signal_name}, log[-4000:]
    stopped_at = int(stops[0][1])
    assert 0 < stopped_at < MAX_STEPS
    assert f"resumed from {job.run_dir / 'checkpoints' / f'step_{stopped_at:08d}'}" in log
    if signal_name == "SIGUSR1":  # the job asked for its own requeue; a SIGTERM requeue is Slurm's
        assert f"requeued job {job.job_id} (restart 1 of at most 3)" in log
    assert_clean_log(log)
    assert_same_losses(job.run_dir, torchrun_baseline)


def test_slurm_requeued_job_logs_one_wandb_run(preempted):
    """Decoded from the offline .wandb files with wandb's protobuf definitions (tests/launcher/wandb_records.py)."""
    from wandb_records import config_values, history_steps, run_record, runs_in_order

    job, info, error = preempted["usr1"]
    if error is not None:
        pytest.fail(f"the USR1 scenario failed: {error}")
    runs = runs_in_order(job.run_dir / "wandb")
    assert len(runs) == 2  # the first job segment and the requeued one
    run_id = (job.run_dir / "wandb_run_id").read_text().strip()
    steps, restarts = [], []
    for recs in runs:
        assert run_record(recs).run_id == run_id
        steps += history_steps(recs)
        config = config_values(recs)
        assert config["slurm"]["job_id"] == job.job_id and config["slurm"]["nodes"] == 1
        restarts.append(config["slurm"]["restart_count"])
    assert restarts == [0, 1]
    assert steps == sorted(set(steps)), f"repeated or backwards steps: {steps}"
    assert steps == list(range(1, MAX_STEPS + 1))
