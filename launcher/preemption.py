"""Graceful stop on SIGTERM / SIGUSR1 (Slurm sends USR1 ahead of preemption with --signal=USR1@120).

The handler only sets a flag. The loop asks `StopAgreement.poll()` once per step; it returns true on every rank at
the same step once any rank was signalled, and the loop then saves a checkpoint and exits 0, so the job can be
requeued and resume exactly.

Agreeing across ranks needs a collective, and a blocking one each step would be a host sync in the step (on GPU
the flag would have to travel through the device stream). So the flag goes through an asynchronous all-reduce on a
CPU (gloo) process group of its own: each step starts one and reads the one started a step earlier, which has long
finished by then. The stop therefore lands one step after the signal on multi-rank runs; a single process stops
at the step the signal arrived in.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.distributed as dist

from launcher.stop_request import StopRequest

log = logging.getLogger(__name__)


class StopAgreement:
    """Every rank learns, at the same step, that some rank was asked to stop. Build it on every rank (it creates a
    process group, a collective call), call `poll()` exactly once per step on every rank, and `close()` before
    the process group is destroyed."""

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop
        self.group: Optional[Any] = None
        self._pending: Optional[tuple[Any, torch.Tensor]] = None
        if dist.is_initialized() and dist.get_world_size() > 1:
            # Its own CPU group: the flag never touches the accelerator's stream, and the all-reduce left in flight
            # over a step cannot interleave with the step's own collectives.
            self.group = dist.new_group(backend="gloo")

    def poll(self) -> bool:
        if self.group is None:
            return self.stop.requested
        decided = False
        if self._pending is not None:
            decided = self._collect()
        flag = torch.tensor([1 if self.stop.requested else 0], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self._pending = (work, flag)
        return decided

    def _collect(self) -> bool:
        assert self._pending is not None
        work, flag = self._pending
        self._pending = None
        work.wait()
        return bool(flag.item())

    def close(self) -> None:
        """Finish the all-reduce still in flight (every rank has exactly one), then drop the group."""
        if self.group is None:
            return
        if self._pending is not None:
            self._collect()
        dist.destroy_process_group(self.group)
        self.group = None
