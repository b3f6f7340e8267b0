"""The `cluster` config section: what Slurm is asked for, by training jobs (`python -m launcher.submit`) and by
the data pipeline's array jobs (`executor=slurm`). configs/cluster/<name>.yaml holds only what a cluster changes.

Building the dataclass (OmegaConf.to_object) runs `__post_init__`, which rejects values Slurm would reject later
or that cannot work, naming the key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Optional


class ClusterConfigError(ValueError):
    """A cluster setting that cannot work; the message names the `cluster.` key and the fix."""


@dataclass
class ClusterConfig:
    name: str = "default"  # which configs/cluster/<name>.yaml this is
    nodes: int = 1  # nodes per training job
    gpus_per_node: int = 8  # GPUs asked per node (--gpus-per-node); 0: a CPU job (gloo, no GPU request)
    ranks_per_node: Optional[int] = None  # training processes per node; None: gpus_per_node, or the CPUs if 0
    # CPUs of the one task per node (torchrun and its ranks) or of a pipeline task
    cpus_per_task: Optional[int] = None  # None: ranks_per_node for CPU training, else the cluster's default
    mem: Optional[str] = None  # --mem per node (e.g. 500G); None: the partition's default
    time: str = "24:00:00"  # --time limit ([D-]HH:MM:SS, MM:SS or minutes)
    partition: Optional[str] = None  # --partition
    account: Optional[str] = None  # --account
    qos: Optional[str] = None  # --qos
    signal_lead_s: int = 120  # USR1 this long before the time limit (--signal=B:USR1@<s>): checkpoint, requeue
    max_requeues: int = 3  # a training job requeues itself after USR1 at most this many times (Slurm's restart count)
    task_retries: int = 2  # a failed pipeline array task is requeued alone at most this many times
    python: Optional[str] = None  # interpreter on the nodes; None: the one running the submit command (absolute)
    # launcher.submit builds the job at full world size (launcher/dry_run.py) and refuses a layout needing more
    gpu_memory_gb: Optional[float] = None  # GiB of one GPU; None: no memory check before submission
    sbatch_args: list[str] = field(default_factory=list)  # extra sbatch options, e.g. ["--exclusive"]
    env: dict[str, str] = field(default_factory=dict)  # exported into every job (NCCL_*, GLOO_SOCKET_IFNAME, ...)

    def __post_init__(self) -> None:
        for key in ("nodes", "task_retries", "max_requeues", "gpus_per_node", "signal_lead_s"):
            value = getattr(self, key)
            minimum = 1 if key == "nodes" else 0
            if value < minimum:
                raise ClusterConfigError(f"cluster.{key}={value} must be >= {minimum}")
        for key in ("ranks_per_node", "cpus_per_task"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ClusterConfigError(f"cluster.{key}={value} must be >= 1 (or null for the default)")
        if self.gpus_per_node > 0 and self.ranks_per_node not in (None, self.gpus_per_node):
            raise ClusterConfigError(
                f"cluster.ranks_per_node={self.ranks_per_node} with cluster.gpus_per_node={self.gpus_per_node}: "
                f"each rank drives one GPU, so leave ranks_per_node null (or set cluster.gpus_per_node=0 for CPUs)"
            )
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise ClusterConfigError(
                f"cluster.gpu_memory_gb={self.gpu_memory_gb} must be > 0 (GiB of one GPU), or null for no check"
            )
        limit = time_limit_seconds(self.time)
        if self.signal_lead_s >= limit:
            raise ClusterConfigError(
                f"cluster.signal_lead_s={self.signal_lead_s} is not shorter than cluster.time={self.time} "
                f"({limit} s): the job would be told to stop as soon as it starts; lower signal_lead_s"
            )
        if self.signal_lead_s > 65535:
            raise ClusterConfigError(f"cluster.signal_lead_s={self.signal_lead_s}: Slurm accepts at most 65535")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?", str(self.mem)):
            raise ClusterConfigError(f"cluster.mem={self.mem!r}: expected a size such as 4000M, 64G or 1T")
        for key in self.env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ClusterConfigError(f"cluster.env: {key!r} is not a valid environment variable name")

    @property
    def uses_gpus(self) -> bool:
        return self.gpus_per_node > 0

    def training_ranks_per_node(self) -> int:
        """Processes per node of a training job."""
        if self.ranks_per_node is not None:
            return self.ranks_per_node
        return self.gpus_per_node if self.uses_gpus else local_cpus()

    def training_cpus_per_task(self) -> Optional[int]:
        """CPUs asked for each node's task; None leaves it to the cluster (GPU jobs without cpus_per_task)."""
        if self.cpus_per_task is not None:
            return self.cpus_per_task
        return None if self.uses_gpus else self.training_ranks_per_node()


def local_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count, inside containers and jobs)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_TIME_FORMATS = (
    (re.compile(r"^(\d+)-(\d+):(\d+):(\d+)$"), lambda d, h, m, s: ((d * 24 + h) * 60 + m) * 60 + s),
    (re.compile(r"^(\d+)-(\d+):(\d+)$"), lambda d, h, m: ((d * 24 + h) * 60 + m) * 60),
    (re.compile(r"^(\d+)-(\d+)$"), lambda d, h: (d * 24 + h) * 3600),
    (re.compile(r"^(\d+):(\d+):(\d+)$"), lambda h, m, s: (h * 60 + m) * 60 + s),
    (re.compile(r"^(\d+):(\d+)$"), lambda m, s: m * 60 + s),
    (re.compile(r"^(\d+)$"), lambda m: m * 60),
)


def time_limit_seconds(value: str) -> int:
    """Seconds in a Slurm --time value (the formats sbatch accepts; minutes when bare)."""
    text = str(value).strip()
    for pattern, seconds in _TIME_FORMATS:
        match = pattern.match(text)
        if match:
            total = seconds(*(int(g) for g in match.groups()))
            if total <= 0:
                break
            return total
    raise ClusterConfigError(
        f"cluster.time={value!r} is not a Slurm time limit: use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS"
    )
