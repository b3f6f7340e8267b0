"""One writer per run directory, and no orphans: a second launch on a live run dir fails at once naming the
holder (so two launches can no longer interleave metrics.jsonl), and after kill -9 of torchrun its ranks die."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from launcher_testing import (
    PYTHON,
    REPO,
    checkpoint_complete,
    child_env,
    run_train,
    start_train,
    tiny_overrides,
    wait_for,
)


def children(pid: int) -> list[int]:
    """Direct children of a process, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_second_launch_on_a_live_run_dir_fails_naming_the_holder(shards, tmp_path):
    run_dir = tmp_path / "run"
    first = start_train(tiny_overrides(shards, run_dir, max_steps=400), tmp_path, "first.log")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 180, "the first launch's step-4 checkpoint", [first])
        start = time.monotonic()
        second = run_train(tiny_overrides(shards, run_dir, max_steps=400), tmp_path)
        elapsed = time.monotonic() - start
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"is in use by another run (host {os.uname().nodename}, pid {first.pid}" in second.stderr
    assert elapsed < 5, f"the second launch took {elapsed:.1f} s to fail"
    # The first launch's metrics are whole: one record per step, in order.
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))


def test_ranks_die_with_torchrun(shards, tmp_path):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "torchrun.log", "w")
    torchrun = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "launcher.train",
            *tiny_overrides(shards, run_dir, max_steps=400),
        ],
        cwd=REPO,
        env=child_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ranks: list[int] = []
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 240, "the step-4 checkpoint", [torchrun])
        ranks = children(torchrun.pid)
        assert len(ranks) == 2, ranks
        torchrun.send_signal(signal.SIGKILL)
        torchrun.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in ranks):
            time.sleep(0.2)
        survivors = [pid for pid in ranks if alive(pid)]
    finally:
        torchrun.kill()
        for pid in ranks:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not survivors, f"ranks {survivors} kept running 10 s after kill -9 of torchrun"
