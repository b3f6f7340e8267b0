"""Checkpoints: every trainer.checkpoint_every steps, at the last step, and when the ranks agreed to stop (a stop
signal: the loop exits after the save, so the job can be requeued and resume exactly). launcher/checkpoint.py
writes them; resuming happens before the loop (launcher/trainer.py).

With trainer.checkpoint_async the save of the last step and of a stop signal is waited for before the loop ends,
and the end of training waits for any save still in flight. The timings of each save (`checkpoint/blocked_s`: the
loop's wait; `checkpoint/write_s`: an asynchronous save's start to publish) join the next logged record: the save
runs after its step's figures are logged. The host buffers an asynchronous save stages into are allocated once,
after the run's first step (`Checkpointer.prepare_staging`), so no save pays for them.
"""

from __future__ import annotations

from typing import Any

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.train_modules import StepOutput


class Checkpointing(Callback):
    def __init__(self, every: int, async_save: bool = False) -> None:
        self.every = every  # 0: only at the end (and on a stop signal)
        self.async_save = async_save

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Checkpointing:
        return cls(cfg.trainer.checkpoint_every, cfg.trainer.checkpoint_async)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if self.async_save and step == ctx.start_step + 1:
            ctx.checkpointer.prepare_staging(ctx.module)  # once, with the optimizer's state in place
        if ctx.stopping or ctx.last or (self.every > 0 and step % self.every == 0):
            ctx.require_finite()  # never save what a NaN produced
            ctx.request_save()

    def log_metrics(self, ctx: TrainContext, step: int, record: dict[str, Any]) -> None:
        # First in the callback list, so these join the record before the sinks write it.
        record.update(ctx.checkpointer.pop_figures())

    def on_save(self, ctx: TrainContext, step: int) -> None:
        ctx.checkpointer.save(step, ctx.module, ctx.data.batches, ctx.config, wait=ctx.stopping or ctx.last)

    def on_train_end(self, ctx: TrainContext) -> None:
        ctx.checkpointer.close()
