"""Helpers for the launcher tests: run `python -m launcher.train` as a subprocess and read what it wrote.

Runs are real subprocesses (the same command a user types) on a tiny model, with wandb off and every directory
under pytest's tmp_path, so nothing lands in $HOME.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def tiny_overrides(shards: Path, run_dir: Path, max_steps: int = 16, **extra) -> list[str]:
    """A ~20k-parameter model on a vocab of 256, 8 sequences of 32 tokens per step in micro batches of 2."""
    args = {
        "data": "packed",
        "data.path": str(shards),
        "data.seq_len": 32,
        "model.vocab_size": 256,
        "model.dim": 32,
        "model.n_layers": 2,
        "model.n_heads": 2,
        "model.n_kv_heads": 1,
        "model.max_seq_len": 64,
        "trainer.run_dir": str(run_dir),
        "trainer.max_steps": max_steps,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 2,
        "trainer.log_every": 1,
        "trainer.eval_every": 0,
        "trainer.eval_batches": 0,
        "trainer.sample_every": -1,
        "trainer.checkpoint_every": 4,
        "trainer.keep_checkpoints": 2,
        "trainer.progress_bar": "false",
        "trainer.dist_timeout_s": 60,
        "schedule.warmup_steps": 2,
        "logging.wandb.mode": "disabled",
        "logging.plot": "false",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def child_env(tmp_path: Path, **extra: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC_", "WANDB_"))
    }
    env.update(
        WANDB_MODE="disabled",
        WANDB_DIR=str(tmp_path / "wandb"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    for key, value in extra.items():  # None removes a variable
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def train_cmd(*overrides: str) -> list[str]:
    return [PYTHON, "-m", "launcher.train", *overrides]


def run_train(
    overrides: list[str], tmp_path: Path, timeout: float = 180, **env_extra: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(*overrides),
        cwd=REPO,
        env=child_env(tmp_path, **env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def launch(
    args: list[str], nproc: int, tmp: Path, timeout: float = 300, **env_extra: str
) -> subprocess.CompletedProcess:
    """The command a user types: `python -m launcher.train ...`, under torchrun for more than one process."""
    runner = [PYTHON, "-m", "launcher.train"]
    if nproc > 1:
        runner = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "launcher.train",
        ]
    # The shared-memory CPU all-reduce of DeepSpeed is a ~90 s C++ build and only a CPU speed-up: off in tests.
    env = child_env(
        tmp, LOOM_DEEPSPEED_SHM_COMM="0", TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"), **env_extra
    )
    result = subprocess.run([*runner, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


def start_train(overrides: list[str], tmp_path: Path, log_name: str, **env_extra: str) -> subprocess.Popen:
    log = open(tmp_path / log_name, "w")
    return subprocess.Popen(
        train_cmd(*overrides),
        cwd=REPO,
        env=child_env(tmp_path, **env_extra),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited with {p.returncode} while waiting for {what}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_complete(run_dir: Path, step: int) -> bool:
    return (Path(run_dir) / "checkpoints" / f"step_{step:08d}" / "COMPLETE").exists()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
