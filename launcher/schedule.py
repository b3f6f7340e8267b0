"""Learning-rate schedules as multipliers of the peak lr, run by torch's LambdaLR (one per optimizer).

Only the step count is checkpointed (the multipliers are rebuilt from the config), so a resumed run continues the
schedule exactly. Warmup is linear from peak/warmup_steps to the peak.
- cosine: cosine decay from the peak to min_lr_ratio * peak at max_steps.
- wsd (warmup-stable-decay): flat at the peak, then an annealing phase over the last decay_fraction of the run
  down to min_lr_ratio * peak, shaped linear, cosine or 1-sqrt.
- constant: the peak after warmup.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from launcher.config import SCHEDULES


def lr_multiplier(cfg: Any, max_steps: int) -> Callable[[int], float]:
    """f(step) -> lr / peak lr for the `schedule` config section; step counts optimizer steps from 0."""
    warmup, floor, name = cfg.warmup_steps, cfg.min_lr_ratio, cfg.name
    decay_steps = math.ceil(cfg.decay_fraction * max_steps) if name == "wsd" else 0
    decay_start = max_steps - decay_steps

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if name == "constant":
            return 1.0
        if name == "cosine":
            progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "wsd":
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start) / max(1, decay_steps))
            if cfg.decay_shape == "linear":
                remaining = 1.0 - progress
            elif cfg.decay_shape == "cosine":
                remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
            else:  # sqrt: the 1 - sqrt cooldown of Hägele et al. (2024)
                remaining = 1.0 - math.sqrt(progress)
            return floor + (1.0 - floor) * remaining
        raise ValueError(f"schedule.name={name!r} is not one of {list(SCHEDULES)}")

    return multiplier


class LRSchedulers:
    """One LambdaLR per optimizer of a train module, stepped together (they count the same steps with the same
    multiplier). Checkpoints keep only the step count: each base lr is this run's `optim.lr`, so a deliberately
    changed lr (trainer.resume_allow) takes effect from the resumed step, and the lr of that step is recomputed
    from this run's schedule (a run may also change trainer.max_steps or the schedule)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], cfg: Any, max_steps: int) -> None:
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, max_steps)) for optimizer in optimizers
        ]

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    @property
    def last_lr(self) -> float:
        """The lr the next optimizer step uses (the first param group's; groups differ only in weight decay)."""
        return self.schedulers[0].get_last_lr()[0]

    @property
    def steps_done(self) -> int:
        return self.schedulers[0].last_epoch

    def state_dict(self) -> dict[str, int]:
        return {"steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        steps = int(state["steps_done"])
        for scheduler in self.schedulers:
            scheduler.last_epoch = steps
            lrs = [base * multiplier(steps) for base, multiplier in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr
            scheduler._last_lr = lrs
