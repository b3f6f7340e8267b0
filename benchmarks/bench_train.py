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
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

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
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "launcher.train", *overrides]
    return [sys.executable, "-m", "launcher.train", *overrides]


def summarise(records: list[dict], warmup_windows: int, nproc: int) -> dict:
    """Median of the logged throughput windows after the first `warmup_windows`."""
    windows = [r for r in records if r.get("tokens_per_sec") is not None]
    measured = windows[warmup_windows:]
    if not measured:
        raise SystemExit(f"only {len(windows)} logged windows, none left after --warmup-windows={warmup_windows}: "
                         f"raise trainer.max_steps or lower trainer.log_every")
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


def environment() -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    return {
        "device": device,
        "torch": torch.__version__,
        "commit": (commit.stdout.strip() or "unknown") + ("+uncommitted" if dirty.stdout.strip() else ""),
        "load_avg_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=1, help="processes (devices) on this node, via torchrun")
    parser.add_argument("--warmup-windows", type=int, default=2, help="logged windows left out of the figures")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="launcher overrides (after --)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        run_dir = args.out or Path(tmp) / "run"
        overrides = [*QUIET, f"trainer.run_dir={run_dir}", *args.overrides]
        result = subprocess.run(launch_command(args.nproc, overrides), cwd=REPO)
        if result.returncode != 0:
            raise SystemExit(f"the training run failed (exit {result.returncode})")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = {**summarise(records, args.warmup_windows, args.nproc), **environment(), "nproc": args.nproc,
               "overrides": " ".join(args.overrides)}
    print(json.dumps(summary))
    mfu = f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a"
    print(f"| {summary['device']} x{args.nproc} | {summary['overrides']} | {summary['tokens_per_sec']:,.0f} | "
          f"{summary['tokens_per_sec_per_device']:,.0f} | {mfu} | {summary['peak_mem_gib']:.2f} | "
          f"torch {summary['torch']}, {summary['commit']} |")


if __name__ == "__main__":
    main()
