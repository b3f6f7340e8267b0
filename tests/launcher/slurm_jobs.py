"""Helpers for the training tests against the local Slurm: submit with `python -m launcher.submit` (the command a
user types), find and freeze a job's rank processes, read its log and metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from launcher_testing import PYTHON, child_env, tiny_overrides

MAX_STEPS = 32


def job_overrides(shards: Path, name: str, **extra) -> list[str]:
    """The tiny 2-rank run of the launcher tests, named (the run dir follows the name), checkpoints only at the
    stop and at the end."""
    args = [
        a for a in tiny_overrides(shards, Path("unused"), max_steps=MAX_STEPS) if not a.startswith("trainer.run_dir=")
    ]
    return args + [f"trainer.name={name}", "trainer.checkpoint_every=0"] + [f"{k}={v}" for k, v in extra.items()]


def job_env(slurm, tmp_path: Path, **extra) -> dict[str, str]:
    """What the submitting shell exports (sbatch passes it on): no stray SLURM_/WANDB_ variables, one OpenMP
    thread, the local cluster's SLURM_CONF."""
    return slurm.env(child_env(tmp_path, **extra))


@dataclass
class Submitted:
    job_id: str
    run_dir: Path
    log: Path
    stdout: str


def submit(slurm, overrides: list[str], cwd: Path, env: dict[str, str]) -> Submitted:
    result = subprocess.run(
        [PYTHON, "-m", "launcher.submit", *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = re.search(r"^submitted job (\d+)", result.stdout, re.M).group(1)
    run_dir = Path(re.search(r"^run dir: (\S+)", result.stdout, re.M).group(1))
    log = Path(re.search(r"^log: (\S+)", result.stdout, re.M).group(1))
    return Submitted(job_id, run_dir, log, result.stdout)


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_until(predicate, timeout: float, what: str, slurm=None, job_id=None) -> None:
    """Poll `predicate` every 20 ms (and the job's state every second: fail at once if it ended)."""
    deadline = time.monotonic() + timeout
    next_state_check = 0.0
    while time.monotonic() < deadline:
        if predicate():
            return
        if slurm is not None and job_id is not None and time.monotonic() >= next_state_check:
            next_state_check = time.monotonic() + 1
            state = slurm.job(job_id).get("JobState")
            if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "COMPLETED"):
                raise AssertionError(f"job {job_id} ended ({state}) while waiting for {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def rank_pids(run_dir: Path) -> list[int]:
    """The training processes (torchrun's workers) of the run in `run_dir`: `-m launcher.train` with its run dir
    on the command line, not the node launcher (whose arguments contain the same words)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if (
            "launcher.train" in args
            and f"trainer.run_dir={run_dir}" in args
            and "launcher.torchrun_node" not in args
            and not any(a.endswith("srun") for a in args)
        ):
            pids.append(int(entry.name))
    return pids


class Frozen:
    """SIGSTOP a run's ranks (so a signal lands mid-run however fast the tiny run is), SIGCONT on exit. Only the
    pids found for this run dir are touched."""

    def __init__(self, run_dir: Path, ranks: int) -> None:
        self.run_dir, self.ranks, self.pids = run_dir, ranks, []

    def __enter__(self) -> "Frozen":
        wait_until(lambda: len(rank_pids(self.run_dir)) == self.ranks, 30, f"{self.ranks} rank processes")
        self.pids = rank_pids(self.run_dir)
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def job_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
