"""The loop's periodic work as callbacks over one small interface (OLMo-core's callback shape).

The loop in launcher/trainer.py trains; everything it does every so often (log the figures, the held-out loss, a
text sample, a checkpoint) is a `Callback` in a file of its own, built from the config in one list
(launcher/callbacks/__init__.py). Before every step the loop calls `on_step_start(ctx, step)` (a callback that
measures inside the step arms its probes there); at the end of every step, in this order:

1. `on_step_end(ctx, step, out)` on every callback, in the list's order: periodic work. Figures to log go into
   `ctx.record`; a callback that logs or keeps the step's results calls `ctx.require_finite()` first (the run
   stops there if a NaN slipped in since the last check); a callback that wants the run's state saved at this
   step calls `ctx.request_save()`.
2. `log_metrics(ctx, step, record)` when the step has figures: the sinks write them.
3. `on_save(ctx, step)` when a save was requested, outside the tokens/s clock: the checkpoint is written.

Instead of 3., a callback may ask for a roll back (`ctx.request_rollback(reload)`, trainer.spike.action=rollback):
the loop calls `reload()`, which restores the last checkpoint and returns its step, and continues after it.

Around the loop: `on_train_start(ctx)` after the model is built (and resumed) and `on_train_end(ctx)` after the
last step. Every rank runs every hook (evaluation, sampling and saving are collectives); rank-0-only work checks
`ctx.env.is_main`. Work that evaluates or samples runs inside `ctx.paused()`, so it stays out of tokens/s.

A new periodic action is one file: a `Callback` subclass with `from_config(cfg)` (None when its config turns it
off), its config dataclass in launcher/config.py, and its entry in the list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from launcher.watchdog import note_progress

if TYPE_CHECKING:
    from launcher.checkpoint import Checkpointer
    from launcher.config import TrainConfig
    from launcher.data import TrainingData
    from launcher.distributed import DistEnv
    from launcher.metrics import SpeedMeter
    from launcher.nonfinite import NonFiniteGuard
    from launcher.train_modules import StepOutput, TrainModule
    from launcher.validation import RunPlan


@dataclass
class TrainContext:
    """What callbacks see: the run's parts (built once by the trainer) and the state of the step being ended."""

    plan: RunPlan
    config: dict[str, Any]  # the resolved config as plain data (saved with the run and its checkpoints)
    env: DistEnv
    run_dir: Path
    data: TrainingData
    module: TrainModule
    checkpointer: Checkpointer
    speed: SpeedMeter
    guard: NonFiniteGuard
    start_step: int  # the step the run (re)started from
    # ---- the step being ended (set by `begin_step_end`)
    step: int = 0
    lr: float = 0.0  # the learning rate the step used
    last: bool = False  # the run's final step (trainer.max_steps)
    stopping: bool = False  # the ranks agreed to stop after this step (a stop signal)
    record: dict[str, Any] = field(default_factory=dict)  # the step's figures to log, in the order added
    step_started_at: float = 0.0  # time.perf_counter() when this rank asked for the step's batch
    batch_ready_at: float = 0.0  # ... and when the batch was on its device
    save_requested: bool = False
    rollback: Optional[Callable[[], int]] = None  # asked for by a callback: reloads a checkpoint, returns its step
    _finite_until: int = -1

    @property
    def cfg(self) -> TrainConfig:
        return self.plan.cfg

    def begin_step_end(
        self, step: int, lr: float, *, last: bool, stopping: bool, timing: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        self.step, self.lr, self.last, self.stopping = step, lr, last, stopping
        self.step_started_at, self.batch_ready_at = timing
        self.record = {}
        self.save_requested = False
        self.rollback = None

    def require_finite(self) -> None:
        """Stop the run (NonFiniteError on every rank) if a step since the last check had a non-finite loss or
        gradient norm: called before logging or saving what the step produced. Once per step at most (it reads
        the device and all-reduces)."""
        if self._finite_until != self.step:
            self.guard.check(self.step, self.checkpointer.last_saved_step)
            self._finite_until = self.step

    def request_save(self) -> None:
        self.save_requested = True

    def request_rollback(self, reload: Callable[[], int]) -> None:
        """After this step's figures are logged, the loop calls `reload` (instead of saving) and goes on after
        the step it returns."""
        self.rollback = reload

    @contextlib.contextmanager
    def paused(self):
        """A context in which time does not count towards tokens/s (evaluation, sampling, saving); entering and
        leaving it is progress for the hang watchdog (launcher/watchdog.py)."""
        note_progress()
        with self.speed.paused():
            yield
        note_progress()


class Callback:
    """One periodic action of the loop; every hook does nothing unless overridden (see the module docstring)."""

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Callback | None:
        """The callback the config asks for, or None when the config turns it off."""
        raise NotImplementedError

    def on_train_start(self, ctx: TrainContext) -> None:
        pass

    def on_step_start(self, ctx: TrainContext, step: int) -> None:
        pass

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        pass

    def log_metrics(self, ctx: TrainContext, step: int, record: dict[str, Any]) -> None:
        pass

    def on_save(self, ctx: TrainContext, step: int) -> None:
        pass

    def on_train_end(self, ctx: TrainContext) -> None:
        pass


class Callbacks:
    """The run's callbacks, each hook called on all of them in order."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def train_start(self, ctx: TrainContext) -> None:
        for callback in self.callbacks:
            callback.on_train_start(ctx)

    def step_start(self, ctx: TrainContext, step: int) -> None:
        for callback in self.callbacks:
            callback.on_step_start(ctx, step)

    def step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        for callback in self.callbacks:
            callback.on_step_end(ctx, step, out)

    def log_metrics(self, ctx: TrainContext, step: int, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.log_metrics(ctx, step, record)

    def save(self, ctx: TrainContext, step: int) -> None:
        for callback in self.callbacks:
            callback.on_save(ctx, step)

    def train_end(self, ctx: TrainContext) -> None:
        for callback in self.callbacks:
            callback.on_train_end(ctx)
