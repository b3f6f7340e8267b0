"""The held-out loss and perplexity: every trainer.eval_every steps and at the last step, over
trainer.eval_batches micro batches of the data's held-out tail (data.val_fraction) split over the data-parallel
ranks. Off when trainer.eval_batches is 0."""

from __future__ import annotations

import math

import torch

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.distributed import sum_over_ranks
from launcher.train_modules import StepOutput, TrainModule


@torch.no_grad()
def evaluate(module: TrainModule, batches: list[torch.Tensor], device: torch.device) -> tuple[float, float]:
    """Validation loss (token-weighted mean over all ranks' held-out batches) and perplexity. Ranks whose module
    computes no loss for a batch (pipeline stages before the last) add nothing, so every data-parallel rank's rows
    count once."""
    module.train(False)
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        loss = module.eval_loss(inputs, labels)
        if loss is not None:
            total[0] += loss.double() * labels.numel()
            total[1] += labels.numel()
    module.train(True)
    total = sum_over_ranks(total)
    val_loss = (total[0] / total[1]).item() if total[1] > 0 else math.nan
    return val_loss, math.exp(min(val_loss, 50.0))


class ValidationLoss(Callback):
    def __init__(self, every: int, micro_batches: int, micro_batch_size: int) -> None:
        self.every = every  # 0: only at the last step
        self.micro_batches, self.micro_batch_size = micro_batches, micro_batch_size
        self.batches: list[torch.Tensor] = []

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ValidationLoss | None:
        t = cfg.trainer
        return cls(t.eval_every, t.eval_batches, t.micro_batch_size) if t.eval_batches else None

    def on_train_start(self, ctx: TrainContext) -> None:
        micro = self.micro_batch_size
        held_out = ctx.data.batches.eval_batches(self.micro_batches * micro, micro)
        self.batches = ctx.module.eval_batches(held_out)  # the train module's shape (pipeline: whole batches)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if self.batches and ((self.every > 0 and step % self.every == 0) or ctx.last):
            with ctx.paused():
                ctx.record["val_loss"], ctx.record["val_ppl"] = evaluate(ctx.module, self.batches, ctx.env.device)
