"""`python -m launcher.requeue RUN_DIR --max-requeues N`: requeue this Slurm job after its ranks stopped on a
preemption warning (SIGUSR1), unless the run is complete or the job has been requeued N times already.

slurm/train.sbatch calls it once the job step has ended, so `scontrol requeue` never races the ranks' checkpoint
or their metrics being flushed. Whether the run is complete is read from what the run wrote (config.yaml's
trainer.max_steps and the newest complete checkpoint), not from the exit code: a rank stopped by a signal and a
rank that finished both exit 0. Exit codes: 0 requeued or complete, 3 requeue limit reached, 4 scontrol failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

# The checkpoint layout of model/checkpoint_io.py (<run_dir>/checkpoints/step_<N:08d>/COMPLETE), read here without
# importing it: it imports torch, seconds of start-up in the job's last moments. Only the marker's presence is
# checked; the resumed run verifies the checkpoint itself (and falls back to an older one if it is corrupt).
_COMPLETE_CHECKPOINT = re.compile(r"^step_(\d{8})$")


def run_progress(run_dir: Path) -> tuple[Optional[int], Optional[int]]:
    """(step of the newest checkpoint with a COMPLETE marker or None, trainer.max_steps or None if the run wrote
    no config yet)."""
    max_steps = None
    config = run_dir / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        max_steps = int(OmegaConf.load(config).trainer.max_steps)
    steps = [
        int(m.group(1))
        for p in (run_dir / "checkpoints").glob("step_*/COMPLETE")
        if (m := _COMPLETE_CHECKPOINT.match(p.parent.name))
    ]
    return (max(steps) if steps else None), max_steps


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.requeue", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--max-requeues", type=int, required=True)
    args = parser.parse_args(argv)
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        print("launcher.requeue: not inside a Slurm job (no SLURM_JOB_ID)", file=sys.stderr)
        return 2
    step, max_steps = run_progress(args.run_dir)
    if step is not None and max_steps is not None and step >= max_steps:
        print(f"loom: run complete at step {step}: not requeued", flush=True)
        return 0
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    where = f"step {step}" if step is not None else "the start (no checkpoint yet)"
    if restarts >= args.max_requeues:
        print(
            f"loom: not requeued: job {job_id} has already restarted {restarts} time(s) "
            f"(cluster.max_requeues={args.max_requeues}); resubmit the same job to continue from {where}",
            file=sys.stderr,
            flush=True,
        )
        return 3
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        print(
            f"loom: scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}; "
            f"resubmit the same job to continue from {where}",
            file=sys.stderr,
            flush=True,
        )
        return 4
    print(
        f"loom: requeued job {job_id} (restart {restarts + 1} of at most {args.max_requeues}); it resumes from {where}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
