"""Train modules: the training of each layout family in one object (see base.py). `build_train_module` is the one
place where the launcher depends on the layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from launcher.distributed import DistEnv
from launcher.train_modules.base import StepOutput, TrainModule
from launcher.validation import RunPlan

__all__ = ["StepOutput", "TrainModule", "build_train_module"]


def build_train_module(plan: RunPlan, env: DistEnv, init_from: Optional[Path] = None) -> TrainModule:
    """The train module of the plan's layout, its model holding the seed's initial weights (or `init_from`'s)."""
    if plan.dims.cfg.engine == "deepspeed":
        from launcher.train_modules.zero import ZeroTrainModule

        return ZeroTrainModule(plan, env, init_from)
    if plan.dims.pp > 1:
        from launcher.train_modules.pipeline import PipelineTrainModule

        return PipelineTrainModule(plan, env, init_from)
    from launcher.train_modules.torch_layouts import TorchTrainModule

    return TorchTrainModule(plan, env, init_from)
