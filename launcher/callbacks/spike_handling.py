"""Loss spikes (trainer.spike, launcher/spikes.py has the rule and the actions): the train module asks the guard
before every update; at the step's end an event joins the logged record as spike/* keys (whatever the log
interval), and under action=rollback the loop reloads the last checkpoint instead of saving."""

from __future__ import annotations

import logging
from typing import Optional

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.spikes import SpikeGuard, event_record, roll_back
from launcher.train_modules import StepOutput

log = logging.getLogger("launcher")


class SpikeHandling(Callback):
    def __init__(self, guard: SpikeGuard) -> None:
        self.guard = guard

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Optional[SpikeHandling]:
        return cls(SpikeGuard(cfg.trainer.spike)) if cfg.trainer.spike.action != "off" else None

    def on_train_start(self, ctx: TrainContext) -> None:
        self.guard.restart_at(ctx.start_step)
        ctx.module.update_gate = self.guard.judge

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        flags = self.guard.take_event()
        if not flags:
            return
        action = self.guard.action
        if action == "rollback":
            ctx.checkpointer.wait()  # a save in flight counts once written
            if ctx.stopping or ctx.checkpointer.last_saved_step is None:
                why = "the ranks are stopping" if ctx.stopping else "no checkpoint saved yet"
                log.warning("step %d: loss spike, not rolled back (%s): its update was dropped instead", step, why)
                action = "skip"
        batches = ctx.data.batches
        batch = batches.last_batch
        offsets = batches.token_offsets(*batch) if hasattr(batches, "token_offsets") else None  # packed shards
        log.warning(
            "step %d: loss spike (%s), samples [%d, %d): %s",
            step,
            ", ".join(f"{name} {f.value:.4g} > {f.threshold:.4g}" for name, f in flags.items()),
            *batch,
            {"log": "logged only", "skip": "update dropped", "rollback": "rolling back"}[action],
        )
        ctx.record.update(event_record(flags, action, batch, self.guard.events, offsets))
        if action == "rollback":
            ctx.request_rollback(lambda: self._roll_back(ctx))

    def _roll_back(self, ctx: TrainContext) -> int:
        restored = roll_back(ctx)
        self.guard.restart_at(restored)
        return restored
