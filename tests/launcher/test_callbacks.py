"""The loop's callbacks (launcher/callbacks/): the config picks them, in one order; checkpoints come at the
cadence, the last step and a stop, each after the finiteness check, which runs once per step however many
callbacks ask for it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from launcher.callbacks import TrainContext, build_callbacks
from launcher.callbacks.checkpointing import Checkpointing
from launcher.callbacks.metrics_logging import MetricsLogging
from launcher.callbacks.stragglers import Stragglers
from launcher.callbacks.text_sample import TextSample
from launcher.callbacks.val_loss import ValidationLoss
from launcher.config import TrainConfig


@pytest.mark.parametrize(
    "eval_batches, sample_every, kinds",
    [
        (4, 0, [Checkpointing, MetricsLogging, Stragglers, ValidationLoss, TextSample]),
        (0, 0, [Checkpointing, MetricsLogging, Stragglers, TextSample]),
        (4, -1, [Checkpointing, MetricsLogging, Stragglers, ValidationLoss]),
    ],
)
def test_config_picks_the_callbacks_in_one_order(eval_batches, sample_every, kinds):
    cfg = TrainConfig()
    cfg.trainer.eval_batches, cfg.trainer.sample_every = eval_batches, sample_every
    assert [type(c) for c in build_callbacks(cfg)] == kinds


class _Guard:
    def __init__(self):
        self.checked = []

    def check(self, step, last_saved):
        self.checked.append(step)


def _context() -> TrainContext:
    checkpointer = SimpleNamespace(last_saved_step=None)
    return TrainContext(
        plan=None,
        config={},
        env=None,
        run_dir=None,
        data=None,
        module=None,
        checkpointer=checkpointer,
        speed=None,
        guard=_Guard(),
        start_step=0,
    )


def test_checkpoints_at_the_cadence_the_last_step_and_a_stop_after_the_finiteness_check():
    ctx, saving = _context(), Checkpointing(every=4)
    saved = []
    for step in range(1, 11):
        ctx.begin_step_end(step, 1e-3, last=step == 10, stopping=step == 7)
        saving.on_step_end(ctx, step, out=None)
        if ctx.save_requested:
            saved.append(step)
    assert saved == [4, 7, 8, 10]
    assert ctx.guard.checked == saved  # checked before each save, never on other steps


def test_finiteness_is_checked_once_per_step_however_many_ask():
    ctx = _context()
    for step in (1, 2):
        ctx.begin_step_end(step, 1e-3, last=False, stopping=False)
        ctx.require_finite()
        ctx.require_finite()
    assert ctx.guard.checked == [1, 2]
