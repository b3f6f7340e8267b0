"""The training figures and where every figure goes (launcher/metrics.py's sinks, on rank 0 only): the console,
<run_dir>/metrics.jsonl, wandb and a tqdm progress bar; at the end, a loss/lr plot in the run dir.

Every trainer.log_every steps (and at the last) the step's figures join the record: loss (mean over ranks), lr,
gradient norm, tokens/s, MFU and peak memory, the model's auxiliary losses and the MoE load imbalance (each a
mean over ranks), the train module's host values (the fp16 loss scale) and, under trainer.batch_ramp, the step's
global batch. Reading them is the only host sync these steps add."""

from __future__ import annotations

import logging
from typing import Any

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.distributed import mean_over_ranks
from launcher.metrics import ConsoleSink, JsonlSink, MetricsLogger, ProgressBarSink, WandbSink, write_plot
from launcher.train_modules import StepOutput

log = logging.getLogger("launcher")


class MetricsLogging(Callback):
    def __init__(self, log_every: int, progress_bar: bool, plot: bool) -> None:
        self.log_every, self.progress_bar, self.plot = log_every, progress_bar, plot
        self.logger = MetricsLogger([])

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> MetricsLogging:
        return cls(cfg.trainer.log_every, cfg.trainer.progress_bar, cfg.logging.plot)

    def on_train_start(self, ctx: TrainContext) -> None:
        if not ctx.env.is_main:
            return
        sinks: list = [ConsoleSink(), JsonlSink(ctx.run_dir, ctx.start_step)]
        wandb = ctx.cfg.logging.wandb
        if wandb.mode != "disabled":
            sinks.append(WandbSink(wandb, ctx.run_dir, ctx.config, ctx.run_dir.name, resume_step=ctx.start_step))
        progress = ProgressBarSink(ctx.cfg.trainer.max_steps, ctx.start_step) if self.progress_bar else None
        self.logger = MetricsLogger(sinks, progress)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        self.logger.advance(step)
        if step % self.log_every and not ctx.last:
            return
        ctx.require_finite()  # never log what a NaN produced
        ctx.record.update(
            {
                "loss": mean_over_ranks(out.loss.float().reshape(1)).item(),
                "lr": ctx.lr,
                "grad_norm": out.grad_norm.item(),
                **ctx.speed.measure(),
            }
        )
        if ctx.plan.batch_schedule.ramps:  # the step's global batch, in sequences (trainer.batch_ramp)
            ctx.record["global_batch"] = ctx.data.batches.global_batch
        ctx.record.update({name: mean_over_ranks(value.float().reshape(1)).item() for name, value in out.extra.items()})
        ctx.record.update(ctx.module.log_extras())

    def log_metrics(self, ctx: TrainContext, step: int, record: dict[str, Any]) -> None:
        self.logger.log(step, record)

    def on_train_end(self, ctx: TrainContext) -> None:
        self.logger.close()
        if ctx.env.is_main and self.plot:
            plot = write_plot(ctx.run_dir)
            if plot is not None:
                log.info("wrote %s", plot)
