"""launcher.torchrun_node without Slurm (the Slurm tests run it inside jobs): a SIGUSR1 reaches the ranks through
it, they checkpoint and exit 0, a SIGTERM that follows is ignored, and it exits 0 with one line and no traceback;
a signal that arrives before any worker started ends it at once, also with 0."""

from __future__ import annotations

import signal
import subprocess

import pytest
from launcher_testing import PYTHON, REPO, child_env, free_port
from slurm_jobs import Frozen, job_overrides, wait_until

pytestmark = pytest.mark.distributed


def catches(pid: int, sig: signal.Signals) -> bool:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def node_cmd(shards, run_dir):
    return [
        PYTHON,
        "-m",
        "launcher.torchrun_node",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=node-test",
        "-m",
        "launcher.train",
        *job_overrides(shards, "node"),
        f"trainer.run_dir={run_dir}",
    ]


def test_torchrun_node_passes_a_stop_on_once_and_exits_cleanly(shards, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "node.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            node_cmd(shards, run_dir), cwd=REPO, env=child_env(tmp_path), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: f"trainer.run_dir={run_dir}" in log.read_text(), 180, "the ranks' signal handlers")
        with Frozen(run_dir, 2):
            proc.send_signal(signal.SIGUSR1)
            wait_until(lambda: "closing signal SIGUSR1" in log.read_text(), 60, "SIGUSR1 passed to the workers")
            proc.send_signal(signal.SIGTERM)  # e.g. the time limit while they checkpoint: ignored
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text and "closing signal SIGTERM" not in text, text[-3000:]
    assert text.count("stop requested (SIGUSR1)") == 2  # both ranks
    assert "loom: torchrun node stopped on SIGUSR1" in text
    assert list((run_dir / "checkpoints").glob("step_*/COMPLETE"))


def test_torchrun_node_stopped_before_its_workers_start(shards, tmp_path):
    proc = subprocess.Popen(
        node_cmd(shards, tmp_path / "run"),
        cwd=REPO,
        env=child_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # As soon as its handler is in place (the kernel's SigCgt mask), i.e. while it imports torch, long before
    # any worker exists.
    wait_until(lambda: catches(proc.pid, signal.SIGTERM), 60, "the node launcher's SIGTERM handler")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.strip().splitlines()[-1] == (
        "loom: torchrun node stopped on SIGTERM: the workers were asked to checkpoint and exit"
    )
    assert not (tmp_path / "run").exists()
