"""Slurm plumbing shared by training submission and the data pipeline's executor: the resource options a
`cluster` config asks for, where the code and its interpreter live for the job, and job states from
`scontrol show job` (no accounting database is needed, so it works on clusters without slurmdbd).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

from cluster.config import ClusterConfig

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "slurm"
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
    }
)


def resource_options(cluster: ClusterConfig, cpus_per_task: Optional[int]) -> list[str]:
    """sbatch options for time, CPUs, memory and the accounting triple (cluster.sbatch_args go last, by the
    caller, so that they override)."""
    options = [f"--time={cluster.time}"]
    if cpus_per_task is not None:
        options.append(f"--cpus-per-task={cpus_per_task}")
    if cluster.mem is not None:
        options.append(f"--mem={cluster.mem}")
    for key in ("partition", "account", "qos"):
        value = getattr(cluster, key)
        if value:
            options.append(f"--{key}={value}")
    return options


def job_python(cluster: ClusterConfig) -> str:
    """The interpreter jobs run: cluster.python, else this one. Absolute but not symlink-resolved (a venv's
    python is a symlink to the base interpreter; resolving it would leave the venv)."""
    return cluster.python or os.path.abspath(sys.executable)


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One `scontrol show job -o` line as a dict (the first value wins for keys that appear twice)."""
    fields: dict[str, str] = {}
    for key, value in re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s+[A-Za-z][\w:/]*=|$)", line.strip()):
        fields.setdefault(key, value)
    return fields


def job_records(job_id: str, env: Optional[dict[str, str]] = None) -> Optional[list[dict[str, str]]]:
    """`scontrol show job -o <id>`: one record per job (per array task or pending task range for an array);
    None when Slurm no longer knows the job (finished longer ago than MinJobAge)."""
    result = subprocess.run(
        ["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, env=env, timeout=60
    )
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return None
        raise RuntimeError(f"scontrol show job {job_id} failed ({result.returncode}): {result.stderr.strip()}")
    return [parse_scontrol_record(line) for line in result.stdout.splitlines() if line.strip()]
