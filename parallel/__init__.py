"""Loom's parallelism, applied from outside the model: see parallel/api.py for `parallelize` and its fixed order.

The names below are imported on first use, so `import parallel.config` (the launcher validating a config before
any work) does not pay torch's import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from parallel.config import ParallelConfig
from parallel.dims import ParallelDims

if TYPE_CHECKING:
    from parallel.api import (  # noqa: F401
        clip_grad_norm_,
        compute_loss,
        grouped_squared_norms,
        loss_context,
        loss_outside_model,
        parallelize,
        parallelize_stage,
        scalar_loss,
    )

__all__ = [
    "ParallelConfig",
    "ParallelDims",
    "parallelize",
    "parallelize_stage",
    "loss_context",
    "compute_loss",
    "loss_outside_model",
    "scalar_loss",
    "clip_grad_norm_",
    "grouped_squared_norms",
]
_LAZY = set(__all__) - {"ParallelConfig", "ParallelDims"}


def __getattr__(name: str):
    if name in _LAZY:
        from parallel import api

        return getattr(api, name)
    raise AttributeError(f"module 'parallel' has no attribute {name!r}")
