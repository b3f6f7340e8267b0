"""Training throughput through the real launcher: tokens/s, MFU and peak memory of any training config, summarised
for benchmarks/RESULTS.md.

Run: `python benchmarks/bench_train.py [--nproc N] [--warmup-windows 2] [--out DIR] -- <launcher overrides>`.
The GPU check of the parallelism issue (bf16 + compile + FSDP on one GPU, GPT-2 124M on synthetic tokens, the
reference's settings):

    python benchmarks/bench_train.py -- model=gpt2_124m data=synthetic data.seq_len=1024 \
        trainer.global_batch_size=32 trainer.micro_batch_size=32 trainer.precision=bf16 \
        parallel=fsdp parallel.fsdp_param_dtype=bfloat16 parallel.compile=true trainer.max_steps=60 trainer.log_every=10

It runs `python -m launcher.train` (under torchrun when --nproc > 1) into a fresh run directory with evaluation,
sampling, wandb and the progress bar off (any of them can be turned back on in the overrides), reads its
metrics.jsonl, drops the first windows (compilation, allocator and autotuning warm-up), and prints the median
tokens/s (whole job and per device), MFU and peak memory with the device, torch version and git commit, as JSON
and as a RESULTS.md table row. Each window ends in a host sync (the logged loss is read), so its wall time is the
device's time for its steps.

The figures are the ones a user sees in the run's own metrics (console, metrics.jsonl, wandb), not a separate
measurement. They are checked against the wall clock: the timestamps of the run's log lines
(<run_dir>/train_rank0.log) give each window's length, and tokens per step come from the run's config.yaml, so
`wallclock_tokens_per_sec` is an independent figure; `logged_vs_wallclock` is their ratio (1.0 when the metric
is honest). benchmarks/gpu_check.py calls `run_bench` the same way.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
QUIET = [
    "trainer.eval_batches=0",
    "trainer.sample_every=-1",
    "trainer.checkpoint_every=0",
    "trainer.progress_bar=false",
    "logging.wandb.mode=disabled",
    "logging.plot=false",
]


def launch_command(nproc: int, overrides: list[str]) -> list[str]:
    if nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "launcher.train",
            *overrides,
        ]
    return [sys.executable, "-m", "launcher.train", *overrides]


def summarise(records: list[dict], warmup_windows: int, nproc: int) -> dict:
    """Median of the logged throughput windows after the first `warmup_windows`."""
    windows = [r for r in records if r.get("tokens_per_sec") is not None]
    measured = windows[warmup_windows:]
    if not measured:
        raise SystemExit(
            f"only {len(windows)} logged windows, none left after --warmup-windows={warmup_windows}: "
            f"raise trainer.max_steps or lower trainer.log_every"
        )
    tokens_per_sec = statistics.median(r["tokens_per_sec"] for r in measured)
    mfus = [r["mfu"] for r in measured if r.get("mfu") is not None]
    return {
        "windows": len(measured),
        "steps": [measured[0]["step"], measured[-1]["step"]],
        "tokens_per_sec": tokens_per_sec,
        "tokens_per_sec_per_device": tokens_per_sec / nproc,
        "mfu": statistics.median(mfus) if mfus else None,
        "peak_mem_gib": max(r["peak_mem_gib"] for r in measured if r.get("peak_mem_gib") is not None),
        "first_loss": windows[0]["loss"],
        "last_loss": windows[-1]["loss"],
    }


# "[2026-11-30 09:21:54,315][launcher.metrics][INFO] - step 2 | loss 7.641 | ... | tokens_per_sec 489.6 | ..."
_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^\]]*\]\[\w+\] - step (\d+) \|.*tokens_per_sec")


def wallclock_windows(run_dir: Path) -> dict[int, float]:
    """{step: wall-clock tokens/s of the window ending at that log step}, from the log lines' timestamps and the
    tokens per step of the run's config.yaml; empty when the run left no log file (the check is then skipped)."""
    import yaml

    log_file, config_file = Path(run_dir) / "train_rank0.log", Path(run_dir) / "config.yaml"
    if not log_file.exists() or not config_file.exists():
        return {}
    cfg = yaml.safe_load(config_file.read_text())
    seq_len = cfg["data"]["seq_len"]
    trainer = cfg["trainer"]
    batch = trainer["global_batch_size"] or trainer["global_batch_tokens"] // seq_len
    stamps = []
    for line in log_file.read_text().splitlines():
        match = _LOG_LINE.match(line)
        if match:
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            stamps.append((int(match.group(2)), when.timestamp()))
    return {
        step: (step - prev_step) * batch * seq_len / max(when - prev_when, 1e-3)
        for (prev_step, prev_when), (step, when) in zip(stamps, stamps[1:])
    }


def add_wallclock_check(summary: dict, records: list[dict], run_dir: Path, warmup_windows: int) -> dict:
    """The median wall-clock tokens/s over the same windows as the summary, and the logged/wall-clock ratio."""
    windows = [r for r in records if r.get("tokens_per_sec") is not None][warmup_windows:]
    wall = wallclock_windows(run_dir)
    measured = [wall[r["step"]] for r in windows if r["step"] in wall]
    summary["wallclock_tokens_per_sec"] = statistics.median(measured) if measured else None
    summary["logged_vs_wallclock"] = (
        summary["tokens_per_sec"] / summary["wallclock_tokens_per_sec"] if measured else None
    )
    return summary


def environment() -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": device,
        "torch": torch.__version__,
        "commit": git_commit(),
        "load_avg_1m": os.getloadavg()[0],
    }


def git_commit() -> str:
    """The checkout's commit (+uncommitted when tracked files differ), or "unknown" where there is no git (the
    device machine gets a copy of the working tree without .git: gpu_check.py then reads it from its wheels)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def run_bench(
    overrides: list[str],
    *,
    nproc: int = 1,
    warmup_windows: int = 2,
    run_dir: Optional[Path] = None,
    log=None,
    timeout: Optional[float] = None,
    env: Optional[dict] = None,
    stop_at_step: Optional[int] = None,
) -> dict:
    """Run the launcher with `overrides` (plus the quiet settings) and return the summary of its metrics.

    `log`: a file for the launcher's output (default: inherit this process's). `stop_at_step`: once the metrics of
    that step are written, end the run instead of waiting for its end-of-run checkpoint (the launcher always
    writes one; for a 1B model with AdamW state that is ~15 GB, which a throughput figure does not need). Raises
    RuntimeError when the run fails and subprocess.TimeoutExpired (after killing the run's process group) when
    it outlasts `timeout`."""
    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        run_dir = Path(run_dir) if run_dir is not None else Path(tmp) / "run"
        full = [*QUIET, f"trainer.run_dir={run_dir}", *overrides]
        proc = subprocess.Popen(
            launch_command(nproc, full),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT if log else None,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout if timeout is not None else math.inf
        stopped = False
        while proc.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise subprocess.TimeoutExpired(proc.args, timeout)
            if stop_at_step is not None and _last_logged_step(run_dir) >= stop_at_step:
                os.killpg(proc.pid, signal.SIGKILL)  # not SIGTERM: that asks the launcher for one more checkpoint
                proc.wait()
                stopped = True
                break
            time.sleep(0.2)
        if proc.returncode != 0 and not stopped:
            raise RuntimeError(f"the training run failed (exit {proc.returncode})")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = summarise(records, warmup_windows, nproc)
        add_wallclock_check(summary, records, run_dir, warmup_windows)
    return {
        **summary,
        **environment(),
        "nproc": nproc,
        "overrides": " ".join(overrides),
        "stopped_before_final_checkpoint": stopped,
    }


def _last_logged_step(run_dir: Path) -> int:
    """The step of the last complete line of the run's metrics.jsonl (0 before there is one)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    for line in reversed(path.read_text().splitlines()):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line being written
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=1, help="processes (devices) on this node, via torchrun")
    parser.add_argument("--warmup-windows", type=int, default=2, help="logged windows left out of the figures")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="launcher overrides (after --)")
    args = parser.parse_args()

    try:
        summary = run_bench(args.overrides, nproc=args.nproc, warmup_windows=args.warmup_windows, run_dir=args.out)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc
    print(json.dumps(summary))
    mfu = f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a"
    print(
        f"| {summary['device']} x{args.nproc} | {summary['overrides']} | {summary['tokens_per_sec']:,.0f} | "
        f"{summary['tokens_per_sec_per_device']:,.0f} | {mfu} | {summary['peak_mem_gib']:.2f} | "
        f"torch {summary['torch']}, {summary['commit']} |"
    )


if __name__ == "__main__":
    main()
