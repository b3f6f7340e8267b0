"""A rank that stalls does not hang the job in silence (launcher/watchdog.py): a SIGSTOPped rank, and a rank stuck
in an endless loop while its heartbeat thread still runs, are named in the log with the Python stacks of the
live ranks, and the job exits non-zero within trainer.hang_timeout_s + 30 s."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launcher_testing import PYTHON, REPO, child_env, tiny_overrides, wait_for

pytestmark = pytest.mark.distributed

HANG_TIMEOUT_S = 20
# A SIGSTOPped rank is found by its missing heartbeat; torchrun then waits 30 s for it (it cannot take SIGTERM)
# before SIGKILL, all inside the bound.
PEER_TIMEOUT_S = 5

# Loaded by every Python process of the test through PYTHONPATH: SIGUSR2 makes local rank 1 spin for ever in its
# main thread (between bytecodes, so its watchdog threads go on beating).
SPIN_ON_USR2 = """
import os, signal

if os.environ.get("LOCAL_RANK") == "1":
    def spin_for_ever(signum, frame):
        while True:
            pass

    signal.signal(signal.SIGUSR2, spin_for_ever)
"""


def start(shards: Path, tmp: Path) -> subprocess.Popen:
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(SPIN_ON_USR2)
    args = tiny_overrides(
        shards,
        tmp / "run",
        max_steps=100000,
        **{"trainer.peer_timeout_s": PEER_TIMEOUT_S, "trainer.hang_timeout_s": HANG_TIMEOUT_S},
    )
    env = child_env(tmp, PYTHONPATH=os.pathsep.join([str(tmp / "site"), os.environ.get("PYTHONPATH", str(REPO))]))
    runner = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "launcher.train"]
    with open(tmp / "job.log", "w") as log:
        return subprocess.Popen([*runner, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def worker_pid(job: subprocess.Popen, local_rank: int) -> int:
    children = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with LOCAL_RANK={local_rank} among {children}")


# sigstop waits out torchrun's own 30 s on a stopped worker; the endless loop takes the same verdict path, faster
@pytest.mark.parametrize("stall", [pytest.param("sigstop", marks=pytest.mark.slow), "endless_loop"])
def test_a_stalled_rank_is_named_with_the_stacks_of_the_others(shards, tmp_path, stall):
    job = start(shards, tmp_path)
    stopped = None
    try:
        metrics = tmp_path / "run" / "metrics.jsonl"
        wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 5, 120, "five steps", [job])
        stopped = worker_pid(job, 1)
        stalled_at = time.monotonic()
        os.kill(stopped, signal.SIGSTOP if stall == "sigstop" else signal.SIGUSR2)
        code = job.wait(timeout=HANG_TIMEOUT_S + 60)
        took = time.monotonic() - stalled_at
    finally:
        if job.poll() is None:
            job.kill()
        if stopped is not None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(stopped, sig)
                except ProcessLookupError:
                    pass
    log = (tmp_path / "job.log").read_text()
    assert code != 0, log[-3000:]
    assert took <= HANG_TIMEOUT_S + 30, f"the job took {took:.0f} s to exit"
    assert "watchdog: Python stacks of rank 0" in log, log[-3000:]
    if stall == "sigstop":  # its heartbeat stopped with it
        assert "lost rank 1 on" in log and "no heartbeat for" in log, log[-3000:]
    else:  # beating, but behind and not waiting on the others: named, and its own stack shows where it spins
        assert "hang: no rank made progress" in log, log[-3000:]
        assert "did not arrive: rank 1 on" in log and "sitecustomize.py" in log, log[-3000:]
        assert "watchdog: Python stacks of rank 1" in log and "spin_for_ever" in log, log[-3000:]
