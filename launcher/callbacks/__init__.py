"""The loop's periodic work (launcher/callbacks/base.py says how the loop calls it): the one list of callbacks a
run gets, built from its config here and nowhere else."""

from __future__ import annotations

from launcher.callbacks.base import Callback, Callbacks, TrainContext
from launcher.callbacks.checkpointing import Checkpointing
from launcher.callbacks.downstream_eval import DownstreamEval
from launcher.callbacks.layer_health import LayerHealthLogging
from launcher.callbacks.metrics_logging import MetricsLogging
from launcher.callbacks.spike_handling import SpikeHandling
from launcher.callbacks.stragglers import Stragglers
from launcher.callbacks.text_sample import TextSample
from launcher.callbacks.val_loss import ValidationLoss
from launcher.config import TrainConfig

__all__ = ["CALLBACKS", "Callback", "Callbacks", "TrainContext", "build_callbacks"]

# In the order their step-end work runs. Checkpointing first: at a save step it checks that the step is finite
# before anything evaluates or logs it. The training figures before the held-out loss and the sample, so a logged
# record reads loss, lr, ..., step_time/*, layer_*/<group>, spike/*, val_loss, val_ppl, eval/<task>/<metric>,
# sample. The per-rank step times right after the training figures, before other work adds to the step's time.
CALLBACKS: tuple[type[Callback], ...] = (
    Checkpointing,
    MetricsLogging,
    Stragglers,
    LayerHealthLogging,
    SpikeHandling,
    ValidationLoss,
    DownstreamEval,
    TextSample,
)


def build_callbacks(cfg: TrainConfig) -> Callbacks:
    """The callbacks `cfg` turns on, in CALLBACKS order."""
    return Callbacks(callback for kind in CALLBACKS if (callback := kind.from_config(cfg)) is not None)
