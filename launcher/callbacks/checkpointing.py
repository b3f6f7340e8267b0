"""Checkpoints: every trainer.checkpoint_every steps, at the last step, and when the ranks agreed to stop (a stop
signal: the loop exits after the save, so the job can be requeued and resume exactly). launcher/checkpoint.py
writes them; resuming happens before the loop (launcher/trainer.py)."""

from __future__ import annotations

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.train_modules import StepOutput


class Checkpointing(Callback):
    def __init__(self, every: int) -> None:
        self.every = every  # 0: only at the end (and on a stop signal)

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Checkpointing:
        return cls(cfg.trainer.checkpoint_every)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if ctx.stopping or ctx.last or (self.every > 0 and step % self.every == 0):
            ctx.require_finite()  # never save what a NaN produced
            ctx.request_save()

    def on_save(self, ctx: TrainContext, step: int) -> None:
        ctx.checkpointer.save(step, ctx.module, ctx.data.batches, ctx.config)
