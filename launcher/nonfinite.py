"""Stop a run whose loss or gradient norm stops being finite, before it logs or saves what a NaN produced.

A per-step check would read the device every step (a host sync). Instead each step ORs "not finite" into a device
flag, read at log steps and before every save: a NaN at step k stops the run at the next such step with a clear
error, and no checkpoint is written from those weights, so the last good checkpoint survives.

`trainer.skip_nonfinite_steps=N` (large trainers' "skip the bad batch") lets up to N steps through: the train
module then checks every step (a host sync each step) and drops a non-finite step's update (launcher/train_modules);
the (N+1)-th stops the run.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from launcher.distributed import sum_over_ranks

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN or infinite."""


class NonFiniteGuard:
    def __init__(self, device: torch.device, start_step: int, skips_allowed: int) -> None:
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.checked_until = start_step
        self.skips_allowed = skips_allowed
        self.skipped: list[int] = []

    def add(self, step: int, finite: torch.Tensor, skipped: bool) -> None:
        """Record one step: `finite` is the step's device flag; `skipped` says its update was dropped."""
        if skipped:
            self.skipped.append(step)
            log.warning(
                "step %d: loss or gradient norm not finite, update skipped (%d of %d allowed by "
                "trainer.skip_nonfinite_steps)",
                step,
                len(self.skipped),
                self.skips_allowed,
            )
            if len(self.skipped) > self.skips_allowed:
                raise NonFiniteError(
                    f"steps {self.skipped} had a non-finite loss or gradient norm, more than "
                    f"trainer.skip_nonfinite_steps={self.skips_allowed}: the run is diverging; lower optim.lr, "
                    f"lengthen schedule.warmup_steps or check the data"
                )
            return
        self.bad |= ~finite.to(self.bad.device)

    def check(self, step: int, last_saved: Optional[int]) -> None:
        """NonFiniteError (on every rank) if any step since the last check was not finite."""
        bad = float(sum_over_ranks(self.bad.float().reshape(1)).item())
        if bad:
            saved = f"step {last_saved}" if last_saved is not None else "none yet"
            raise NonFiniteError(
                f"the loss or gradient norm became NaN or infinite between steps {self.checked_until + 1} and "
                f"{step}; the run stopped before logging or saving it (last good checkpoint: {saved}). Lower "
                f"optim.lr or lengthen schedule.warmup_steps, check the data, or let up to N bad steps be skipped "
                f"with trainer.skip_nonfinite_steps=N (one host sync per step)"
            )
        self.checked_until = step
