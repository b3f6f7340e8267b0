"""Stragglers: at every log step, each rank's time for the step and for reading its batch, gathered, logged as
step_time/max_s, step_time/min_s and step_time/slowest_rank, data_time/max_s and data_time/slowest_rank (one
process logs its own, so every layout logs the same keys), and a warning naming the rank and host when the slowest
takes more than 1.5 x the median.

What it can see: a rank's own step time runs from asking for its batch to the step's results being ready on its
device (synchronised at log steps only, where the loss is read anyway). Collectives inside the step make ranks
wait for each other, so a rank slow in its forward or backward shows up as every rank's time growing; a rank slow
outside the collectives (reading data, the optimizer step, host work) shows up as its own time growing, and the
data time alone names a rank whose storage or loading is slow. Costs one small all-gather per log step."""

from __future__ import annotations

import logging
import socket
import statistics
import time

import torch
import torch.distributed as dist

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.train_modules import StepOutput

log = logging.getLogger("launcher")
SLOW_FACTOR = 1.5  # a rank this many times the median step (or data) time is named in a warning


class Stragglers(Callback):
    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.hosts: list[str] = []

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Stragglers:
        return cls(cfg.trainer.log_every)

    def on_train_start(self, ctx: TrainContext) -> None:
        self.hosts = [socket.gethostname()]  # one process logs the same keys (every layout logs the same figures)
        if ctx.env.distributed and dist.is_initialized():
            self.hosts = [""] * ctx.env.world_size
            dist.all_gather_object(self.hosts, socket.gethostname())

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if not self.hosts or (step % self.log_every and not ctx.last) or not ctx.step_started_at:
            return
        if ctx.env.device.type == "cuda":
            torch.cuda.synchronize(ctx.env.device)
        mine = torch.tensor(
            [time.perf_counter() - ctx.step_started_at, ctx.batch_ready_at - ctx.step_started_at],
            dtype=torch.float64,
            device=ctx.env.device,
        )
        if len(self.hosts) > 1:
            every = [torch.zeros_like(mine) for _ in self.hosts]
            dist.all_gather(every, mine)
            times = torch.stack(every).cpu()
        else:
            times = mine.cpu()[None]
        for column, name in ((0, "step_time"), (1, "data_time")):
            values = times[:, column].tolist()
            slowest = max(range(len(values)), key=values.__getitem__)
            ctx.record[f"{name}/max_s"] = values[slowest]
            ctx.record[f"{name}/slowest_rank"] = slowest
            if name == "step_time":
                ctx.record[f"{name}/min_s"] = min(values)
            median = statistics.median(values)
            slow = values[slowest] > SLOW_FACTOR * median and values[slowest] > 0.01
            if len(values) > 1 and ctx.env.is_main and slow:
                log.warning(
                    "straggler at step %d: rank %d on %s took %.3f s for its %s, the median rank %.3f s",
                    step,
                    slowest,
                    self.hosts[slowest],
                    values[slowest],
                    name.replace("_", " "),
                    median,
                )
