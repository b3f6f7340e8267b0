"""How long a checkpoint blocks the training loop, synchronous against asynchronous (trainer.checkpoint_async).

Run: `python benchmarks/bench_checkpoint.py [--out DIR] [-- <launcher overrides>]`. By default it trains GPT-2
124M (model=gpt2_124m: 124M parameters, so a checkpoint of weights and AdamW moments is ~1.5 GB) on CPU with
synthetic tokens for 6 steps, saving at step 3 and at the end, once with synchronous and once with asynchronous
checkpoints, through the real launcher (`python -m launcher.train`). The figure compared is the launcher's own
per-save log line "checkpoint step 3: the loop was blocked X s" (also logged as `checkpoint/blocked_s`): step 3's
save is periodic, so the async run trains steps 4-6 while it is written, and its background write time
("written in the background in Y s") is reported too. Prints one JSON object and a RESULTS.md table row.
tests/launcher/test_async_checkpoint_speed.py (marked slow) asserts the ratio is under 0.1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAVE_STEP = 3
DEFAULT_OVERRIDES = [
    "model=gpt2_124m",
    "model.max_seq_len=64",
    "data=synthetic",
    "data.seq_len=32",
    "trainer.device=cpu",
    "trainer.global_batch_size=1",
    "trainer.micro_batch_size=1",
    "trainer.max_steps=6",
    f"trainer.checkpoint_every={SAVE_STEP}",
    "trainer.keep_checkpoints=1",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.eval_batches=0",
    "trainer.sample_every=-1",
    "trainer.progress_bar=false",
    "schedule.warmup_steps=1",
    "logging.wandb.mode=disabled",
    "logging.plot=false",
]


def _run(run_dir: Path, overrides: list[str], checkpoint_async: bool) -> dict[str, float]:
    """One training run; the blocked time of step SAVE_STEP's save (and its background write time if async)."""
    # One intra-op thread unless the caller sets it: on a shared 2-core machine OpenMP's spinning threads made
    # every step and copy several times slower, and both runs measure the same way.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "launcher.train",
        *DEFAULT_OVERRIDES,
        *overrides,
        f"trainer.run_dir={run_dir}",
        f"trainer.checkpoint_async={str(checkpoint_async).lower()}",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    out = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{out[-4000:]}")
    blocked = re.search(rf"checkpoint step {SAVE_STEP}: the loop was blocked ([0-9.]+) s", out)
    if blocked is None:
        raise RuntimeError(f"no blocked time of step {SAVE_STEP}'s save in the run's log:\n{out[-4000:]}")
    figures = {"blocked_s": float(blocked.group(1))}
    written = re.search(rf"checkpoint step {SAVE_STEP}: written in the background in ([0-9.]+) s", out)
    if written is not None:
        figures["write_s"] = float(written.group(1))
    size = sum(p.stat().st_size for p in (run_dir / "checkpoints").rglob("*") if p.is_file())
    figures["checkpoint_gib"] = size / 2**30
    return figures


def run_bench(overrides: list[str], out: Path) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    sync = _run(out / "sync", overrides, checkpoint_async=False)
    asynchronous = _run(out / "async", overrides, checkpoint_async=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip(),
        "cpus": os.cpu_count(),
        "overrides": overrides,
        "sync_blocked_s": sync["blocked_s"],
        "async_blocked_s": asynchronous["blocked_s"],
        "async_write_s": asynchronous.get("write_s"),
        "checkpoint_gib": sync["checkpoint_gib"],
        "async_over_sync": asynchronous["blocked_s"] / sync["blocked_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for the two runs (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="launcher overrides after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_checkpoint_") as tmp:
        report = run_bench(args.overrides, args.out or Path(tmp))
    print(json.dumps(report, indent=1))
    print(
        f"| {report['date']} | {report['commit']} | {report['checkpoint_gib']:.2f} GiB | "
        f"{report['sync_blocked_s']:.2f} | {report['async_blocked_s']:.3f} | {report['async_write_s']:.2f} | "
        f"{report['async_over_sync']:.3f} |"
    )


if __name__ == "__main__":
    main()
