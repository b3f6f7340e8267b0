"""The held-out loss and perplexity: every trainer.eval_every steps and at the last step, over
trainer.eval_batches micro batches of the data's held-out tail (data.val_fraction) split over the data-parallel
ranks. Off when trainer.eval_batches is 0.

When the shards record each document's source (the data pipeline's tokenize step writes the `source` field that
mixing uses) and there are several, the loss and perplexity of each source are logged too, as
`val_loss/<source>` and `val_ppl/<source>`: the mean loss over the held-out tokens of that source's documents
(a token counts for the document it is predicted in). Each is the layout's own held-out loss with the other
sources' labels ignored, so every layout computes it as it computes `val_loss`, at one extra forward per source."""

from __future__ import annotations

import math

import torch

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.data import inputs_and_labels
from launcher.distributed import sum_over_ranks
from launcher.train_modules import StepOutput, TrainModule
from model.loss import IGNORE_INDEX


@torch.no_grad()
def evaluate(module: TrainModule, batches: list[torch.Tensor], device: torch.device) -> tuple[float, float]:
    """Validation loss (token-weighted mean over all ranks' held-out batches) and perplexity. Ranks whose module
    computes no loss for a batch (pipeline stages before the last) add nothing, so every data-parallel rank's rows
    count once."""
    module.train(False)
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        inputs, labels = inputs_and_labels(batch)
        loss = module.eval_loss(inputs, labels)
        if loss is not None:
            counted = (labels != IGNORE_INDEX).sum()  # every label, but for SFT loss masks
            total[0] += loss.double() * counted
            total[1] += counted
    module.train(True)
    total = sum_over_ranks(total)
    val_loss = (total[0] / total[1]).item() if total[1] > 0 else math.nan
    return val_loss, math.exp(min(val_loss, 50.0))


@torch.no_grad()
def evaluate_by_source(
    module: TrainModule, batches: list[torch.Tensor], sources: list[torch.Tensor], n_sources: int, device: torch.device
) -> list[float]:
    """The held-out loss of each source (NaN for a source with no held-out token): `sources` gives, per token of
    `batches`, its source index. Every rank runs one forward per source and batch whatever its tokens, so layouts
    whose forward is a collective stay in step."""
    module.train(False)
    total = torch.zeros(n_sources, 2, device=device, dtype=torch.float64)
    for batch, source in zip(batches, sources):
        batch, source = batch.to(device, non_blocking=True), source.to(device, non_blocking=True)
        (inputs, labels), label_sources = inputs_and_labels(batch), source[:, 1:]
        for index in range(n_sources):
            mine = (label_sources == index) & (labels != IGNORE_INDEX)
            loss = module.eval_loss(inputs, labels.masked_fill(~mine, IGNORE_INDEX))
            count = mine.sum()
            if loss is not None and count > 0:
                total[index, 0] += loss.double() * count
                total[index, 1] += count
    module.train(True)
    total = sum_over_ranks(total)
    return [loss_sum / count if count > 0 else math.nan for loss_sum, count in total.tolist()]


class ValidationLoss(Callback):
    def __init__(self, every: int, micro_batches: int, micro_batch_size: int) -> None:
        self.every = every  # 0: only at the last step
        self.micro_batches, self.micro_batch_size = micro_batches, micro_batch_size
        self.batches: list[torch.Tensor] = []
        self.sources: list[torch.Tensor] = []  # per token of self.batches, an index into self.source_names
        self.source_names: list[str] = []

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ValidationLoss | None:
        t = cfg.trainer
        return cls(t.eval_every, t.eval_batches, t.micro_batch_size) if t.eval_batches else None

    def on_train_start(self, ctx: TrainContext) -> None:
        micro = self.micro_batch_size
        held_out = ctx.data.batches.eval_batches(self.micro_batches * micro, micro)
        self.batches = ctx.module.eval_batches(held_out)  # the train module's shape (pipeline: whole batches)
        names = ctx.data.batches.source_names
        if len(names) > 1:
            self.source_names = names
            self.sources = ctx.module.eval_batches(ctx.data.batches.eval_sources(self.micro_batches * micro, micro))

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if self.batches and ((self.every > 0 and step % self.every == 0) or ctx.last):
            with ctx.paused():
                ctx.record["val_loss"], ctx.record["val_ppl"] = evaluate(ctx.module, self.batches, ctx.env.device)
                if self.source_names:
                    losses = evaluate_by_source(
                        ctx.module, self.batches, self.sources, len(self.source_names), ctx.env.device
                    )
                    for name, loss in zip(self.source_names, losses):
                        ctx.record[f"val_loss/{name}"] = loss
                        ctx.record[f"val_ppl/{name}"] = math.exp(min(loss, 50.0))
