"""Per-layer health (trainer.layer_health, launcher/layer_health.py has the figures and how they are reduced): the
probe is armed before each log step and its figures join that step's record as layer_<figure>/<group> keys, which
wandb shows as one panel section per figure."""

from __future__ import annotations

from typing import Optional

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.layer_health import LayerHealth
from launcher.train_modules import StepOutput


class LayerHealthLogging(Callback):
    def __init__(self, log_every: int, max_steps: int) -> None:
        self.log_every, self.max_steps = log_every, max_steps

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Optional[LayerHealthLogging]:
        return cls(cfg.trainer.log_every, cfg.trainer.max_steps) if cfg.trainer.layer_health else None

    def on_train_start(self, ctx: TrainContext) -> None:
        dims = ctx.plan.dims
        pp_group = dims.submesh("pp").get_group() if dims.pp > 1 else None
        measure_forward = dims.cp == 1 and not ctx.cfg.parallel.compile
        ctx.module.layer_health = LayerHealth(ctx.module, measure_forward, pp_group)

    def on_step_start(self, ctx: TrainContext, step: int) -> None:
        # A pipeline's first step also runs its stages on uninitialised tensors (shape inference): no forward probes.
        forward = ctx.plan.dims.pp == 1 or step > ctx.start_step + 1
        ctx.module.layer_health.arm(step % self.log_every == 0 or step == self.max_steps, forward)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        probe = ctx.module.layer_health
        if probe.armed:  # before the held-out loss and the sample, whose forwards are not the step's
            ctx.record.update(probe.figures())
