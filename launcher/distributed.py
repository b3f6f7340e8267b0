"""Process-group setup from the launcher's environment: torchrun (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*) or a
plain `srun` (SLURM_PROCID/SLURM_STEP_NUM_TASKS/SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT exported by the
job script). gloo on CPU, NCCL on GPU. A single process gets no process group, unless its layout needs a mesh
(FSDP on one device).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _from_env() -> tuple[int, int, int]:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_NUM_TASKS" in os.environ:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_STEP_NUM_TASKS"])
        if world > 1 and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
            raise RuntimeError(
                "srun launch without MASTER_ADDR/MASTER_PORT: export them in the job script (see slurm/train.sbatch)"
            )
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        return rank, int(os.environ.get("SLURM_LOCALID", 0)), world
    return 0, 0, 1


def die_with_launcher() -> None:
    """Under torchrun or srun, end this rank when the process that launched it dies (kill -9 of torchrun would
    otherwise leave its ranks training and writing checkpoints): cluster/ownership.py's parent-death signal
    and watchdog. A plain `python -m launcher.train` is left alone (its parent is a shell the user may close on
    purpose, e.g. under nohup)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "SLURM_STEP_ID" not in os.environ:
        return
    from cluster.ownership import die_with_parent

    die_with_parent(os.getppid())


def init_distributed(
    device_pref: str, timeout_s: int, *, one_rank_group: bool = False, trace_dir: Optional[Path] = None
) -> DistEnv:
    """This process's rank, world and device, with the process group joined (gloo on CPU, NCCL on GPU). A single
    process gets a group only with `one_rank_group` (FSDP on one device needs a DeviceMesh), from an in-memory
    store: there is nobody to meet, so no address or port is needed. Under NCCL the flight recorder is on (unless
    the environment says otherwise): the last collectives of each rank, dumped to `trace_dir` on a collective
    timeout and by the peer watchdog (launcher/watchdog.py)."""
    rank, local_rank, world_size = _from_env()
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible: use trainer.device=cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if use_cuda and world_size > 1:
        _enable_flight_recorder(trace_dir)
    if (world_size > 1 or one_rank_group) and not dist.is_initialized():
        store = {"init_method": "env://"} if world_size > 1 else {"store": dist.HashStore()}
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if use_cuda else None,
            **store,
        )
    return DistEnv(rank, local_rank, world_size, device)


def _enable_flight_recorder(trace_dir: Optional[Path]) -> None:
    """NCCL's flight recorder, read by the process group when it is created: a ring of the last 2,000 collectives
    per rank, dumped on a timeout to <trace_dir>/nccl_trace_rank_<rank> (torch's own variables; set ones win)."""
    os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
    os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCH_FR_DUMP_TEMP_FILE", str(trace_dir / "nccl_trace_rank_"))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
