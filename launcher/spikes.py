"""Loss-spike handling (trainer.spike): flag a step whose loss or gradient norm jumps, then log it, drop its update,
or roll the run back to its last checkpoint and never train on that batch again.

The rule (`SpikeDetector`): over the last `window` steps that were not flagged, take the mean m and the population
standard deviation s of the loss (and of the gradient norm before clipping, with trainer.spike.grad_norm); a step
is a spike when its value exceeds m + z * max(s, 1% of |m|). Only upward jumps count (a falling loss is never
flagged); nothing is flagged until the window is full (the warm-up: the first `window` steps of the run, and of
each restart, since the window is not checkpointed); a flagged step does not enter the window, so a spike does not
widen the band that judges the next steps. The floor on s keeps a flat stretch (s near 0) from flagging noise.

The judgement happens inside the train module's step, after the gradients and their global norm, before the
optimizer step (`TrainModule.spike_drops_update` calls `SpikeGuard.judge`): the loss is averaged over the ranks
and the gradient norm is the global one, reduced in one all-reduce, so every rank judges the same numbers and
takes the same decision on every layout. Reading them is a host sync per step: the price of the option (off by
default). Actions:
- log: the step trains as usual; the event is recorded.
- skip: the step's update is dropped (gradients zeroed, the lr schedule advances, the data has moved past the
  batch), as trainer.skip_nonfinite_steps does for a non-finite step.
- rollback: the update is dropped and the run reloads its last checkpoint in-process, with the flagged batch's
  sample range added to the data's skipped ranges (launcher/data.py SkippedSamples, checkpointed with the data
  position), so the steps after the checkpoint train on the data as if that batch had never been in the stream.
  With no checkpoint yet, or when the ranks are stopping at that step, the step is skipped instead.

Every event joins the step's logged record (metrics.jsonl, wandb) as spike/* keys: which figure spiked, its value
and threshold, the window's mean, the action taken and the batch's [sample_start, sample_end) in the sample stream,
the numbers data.skip_samples takes to skip those documents in another run; with packed shards, metrics.jsonl
also lists where each of the batch's samples starts in the shards' token stream (`spike/token_offsets`), which
leads to the documents.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from launcher.config import SpikeConfig
from launcher.distributed import mean_over_ranks

if TYPE_CHECKING:
    from launcher.callbacks.base import TrainContext

log = logging.getLogger("launcher")

STD_FLOOR = 0.01  # the band's standard deviation is at least this fraction of the window's mean


@dataclass
class Flag:
    """One figure over its threshold."""

    value: float
    threshold: float
    mean: float


class SpikeDetector:
    """The rule of the module docstring, over host floats; `check` returns the figures that spiked (empty: none)."""

    def __init__(self, window: int, z: float, names: tuple[str, ...] = ("loss", "grad_norm")) -> None:
        self.window, self.z, self.names = window, z, names
        self.history: deque[tuple[int, dict[str, float]]] = deque(maxlen=window)  # (step, values) not flagged

    def check(self, step: int, values: dict[str, float]) -> dict[str, Flag]:
        flags = {}
        for name in self.names:
            value = values[name]
            if len(self.history) == self.window and math.isfinite(value):
                window = [seen[name] for _, seen in self.history]
                mean = statistics.fmean(window)
                threshold = mean + self.z * max(statistics.pstdev(window, mean), STD_FLOOR * abs(mean))
                if value > threshold:
                    flags[name] = Flag(value, threshold, mean)
        if not flags and all(math.isfinite(values[name]) for name in self.names):
            self.history.append((step, {name: values[name] for name in self.names}))
        return flags

    def forget_after(self, step: int) -> None:
        """Drop the steps after `step` (a roll back to it replays them); the window refills as they replay."""
        self.history = deque(((s, v) for s, v in self.history if s <= step), maxlen=self.window)


class SpikeGuard:
    """The run's detector and action: `judge` is the train module's gate; `take_event` hands the step's event (if
    any) to the callback that logs it and asks for a roll back (launcher/callbacks/spike_handling.py)."""

    def __init__(self, cfg: SpikeConfig) -> None:
        names = ("loss", "grad_norm") if cfg.grad_norm else ("loss",)
        self.detector = SpikeDetector(cfg.window, cfg.z, names)
        self.action = cfg.action
        self.events = 0
        self.step = 0  # the step being judged: set to the (re)start step, advanced by each judgement
        self._pending: Optional[dict[str, Flag]] = None

    def judge(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """Whether the step's update must be dropped. `loss`: this rank's term of the loss (its mean over ranks
        is the step's loss); `grad_norm`: the global norm (the same on every rank). One all-reduce, one host
        read; every rank then decides from the same two numbers."""
        pair = torch.stack([loss.detach().float().reshape(()), grad_norm.detach().float().to(loss.device).reshape(())])
        mean_loss, norm = mean_over_ranks(pair).tolist()
        self.step += 1
        flags = self.detector.check(self.step, {"loss": mean_loss, "grad_norm": norm})
        self._pending = flags or None
        return bool(flags) and self.action in ("skip", "rollback")

    def take_event(self) -> Optional[dict[str, Flag]]:
        pending, self._pending = self._pending, None
        if pending:
            self.events += 1
        return pending

    def restart_at(self, step: int) -> None:
        """The run (re)starts after `step`: from a checkpoint at start, or after a roll back."""
        self.step = step
        self.detector.forget_after(step)


def event_record(
    flags: dict[str, Flag], action: str, batch: tuple[int, int], count: int, token_offsets: Optional[list[int]] = None
) -> dict[str, Any]:
    """The spike/* figures of one event, for the step's logged record (wandb takes the numbers)."""
    record: dict[str, Any] = {"spike/count": count}
    for name, flag in flags.items():
        record[f"spike/{name}"] = flag.value
        record[f"spike/{name}_threshold"] = flag.threshold
        record[f"spike/{name}_mean"] = flag.mean
    record["spike/action"] = action
    record["spike/update_dropped"] = int(action in ("skip", "rollback"))
    record["spike/sample_start"], record["spike/sample_end"] = batch
    if token_offsets is not None:  # metrics.jsonl only: wandb takes numbers
        record["spike/token_offsets"] = token_offsets
    return record


def roll_back(ctx: TrainContext) -> int:
    """Reload the last checkpoint in-process with the flagged batch added to the data's skipped ranges; returns the
    checkpoint's step (the loop continues after it). Every rank calls it (loading is a collective)."""
    batches = ctx.data.batches
    ctx.checkpointer.wait()  # a save in flight is the newest checkpoint once written
    batches.skipped.add(*batches.last_batch)
    restored = ctx.checkpointer.restore(ctx.module, batches, ctx.config, ctx.cfg.trainer.resume_allow)
    ctx.guard.checked_until = restored
    log.warning(
        "step %d: rolled back to the checkpoint of step %d; samples [%d, %d) are skipped from now on",
        ctx.step,
        restored,
        *batches.last_batch,
    )
    return restored
