"""The DeepSpeed ZeRO 1/2/3 train module (parallel.engine=deepspeed): DeepSpeed's engine owns the optimizer, the
backward (gradient partitioning and reduction), clipping and the step; it also steps our lr schedule.

The engine is built with parallel.zero.deepspeed_config (batch sizes, precision, clipping, AdamW hyperparameters
and offload from our configs) and our AdamW parameter groups (no decay on norms/embeddings, as launcher/optim.py
does). The plain model with its initial weights (the seed's, or `trainer.init_from`'s) comes from the base module
before DeepSpeed copies it into its partitions; the step's micro batches and the model's auxiliary losses go
through the base module's `accumulate`, so ZeRO logs the MoE and MTP figures the torch layouts log.

Checkpoints are the torch layouts' format, so any layout and any world size resumes a ZeRO run and the other way
round: "model" holds the fp32 master weights by parameter name, "optimizer" AdamW's exp_avg, exp_avg_sq and step
under the names torch's get_optimizer_state_dict gives them ("state.<name>.<key>"), gathered from (and scattered
back into) DeepSpeed's partitions one parameter at a time with its safe_get/set_full_* API and kept as row shards
over the ranks (DTensors, which DCP reshards for any layout). DeepSpeed's native files are not written: they
resume only under the same stage and world size.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from launcher.checkpoint import CheckpointError
from launcher.distributed import DistEnv
from launcher.optim import optimizer_state_key, parameter_groups
from launcher.schedule import LRSchedulers
from launcher.train_modules.base import MicroBatch, StepOutput, TrainModule, autocast, initial_model
from launcher.validation import RunPlan
from parallel.zero import (
    ADAM_MOMENT_KEYS,
    deepspeed_config,
    full_master_weights,
    full_moments,
    load_master_weights,
    load_moments,
    optimizer_steps,
    prepare_deepspeed_env,
    row_shards,
)


class _EngineOptimizer:
    """The engine's optimizer in the containers' shape: DeepSpeed steps it; its state is read and written by
    parameter name in the torch layouts' flat format, so checkpoints are interchangeable between engines."""

    def __init__(self, engine: Any, keep: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.engine, self.keep = engine, keep

    def state_dict(self) -> dict[str, Any]:
        """AdamW's state of every parameter, whole ("state.<name>.exp_avg", "...exp_avg_sq", "...step"). A
        collective."""
        steps = torch.tensor(float(optimizer_steps(self.engine)))
        state: dict[str, Any] = {}
        for name, moments in full_moments(self.engine, self.keep).items():
            for key, value in moments.items():
                state[optimizer_state_key(name, key)] = value
            state[optimizer_state_key(name, "step")] = steps.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [name for name, _ in self.engine.module.named_parameters()]
        steps = {float(state[optimizer_state_key(name, "step")]) for name in names}
        if len(steps) != 1:
            # DeepSpeed keeps one step count per flat partition: per-parameter counts that differ (a torch run
            # whose parameters were not all updated equally) cannot be represented exactly.
            raise CheckpointError(
                f"the checkpoint's AdamW step counts differ between parameters ({sorted(steps)}); DeepSpeed ZeRO "
                f"keeps one count for all: resume it under a torch layout (parallel=fsdp, ddp, ...)"
            )
        moments = {name: {key: state[optimizer_state_key(name, key)] for key in ADAM_MOMENT_KEYS} for name in names}
        load_moments(self.engine, moments, int(steps.pop()))


# The non-tensor types DeepSpeed's ZeRO 1-3 checkpoints hold (seen in its optimizer-state files): unpickling may
# build these and nothing else, so a crafted checkpoint cannot run code through DeepSpeed's loader.
_DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


class _WeightsOnlyCheckpointEngine:
    """DeepSpeed's checkpoint engine with `torch.load(weights_only=True)`: DeepSpeed's own engine unpickles its
    files with weights_only=False, which would run whatever a crafted checkpoint holds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def load(self, path: str, map_location=None):
        import importlib

        allowed = [getattr(importlib.import_module(module), name) for module, name in _DEEPSPEED_SAFE_GLOBALS]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)


class ZeroTrainModule(TrainModule):
    def __init__(self, plan: RunPlan, env: DistEnv, init_from: Optional[Path] = None) -> None:
        super().__init__(plan, env)
        prepare_deepspeed_env(env.device.type)
        # DeepSpeed reads the rank from the environment torchrun sets; a single process without torchrun (parallel=
        # zero2 on one rank, e.g. resuming a 2-rank ZeRO run alone) has its in-memory process group but no variables.
        for name, value in (("LOCAL_RANK", env.local_rank), ("RANK", env.rank), ("WORLD_SIZE", env.world_size)):
            os.environ.setdefault(name, str(value))
        import deepspeed

        o, t = self.cfg.optim, self.cfg.trainer
        model = initial_model(plan, env, init_from)
        config = deepspeed_config(
            self.dims,
            micro_batch_size=t.micro_batch_size,
            grad_accum_steps=plan.grad_accum,
            precision=t.precision,
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
            grad_clip=o.grad_clip,
        )
        self.engine, _, _, self.schedulers = deepspeed.initialize(
            model=model,
            model_parameters=parameter_groups(model, o),
            config=config,
            dist_init_required=False,
            lr_scheduler=lambda optimizer: LRSchedulers([optimizer], self.cfg.schedule, t.max_steps),
        )
        self.model_parts = [self.engine.module]
        self.plain_model = self.engine.module
        # Checkpoint tensors are gathered one parameter at a time and kept as row shards over the ranks (DTensors:
        # DCP writes each shard once and reshards them for any layout), so a save or load holds about 1/world of
        # the fp32 weights and moments per rank, plus one whole parameter.
        self.mesh = self.dims.submesh("dp_shard")
        self.optimizers = _EngineOptimizer(self.engine, self._row_shards)
        self.engine.checkpoint_engine = _WeightsOnlyCheckpointEngine(self.engine.checkpoint_engine)

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        loss, extra = self.accumulate(inputs, labels, self._forward_backward)
        grad_norm = self.engine.get_global_grad_norm()  # DeepSpeed reads it to the host: its choice
        grad_norm = torch.as_tensor(math.nan if grad_norm is None else grad_norm, dtype=torch.float64)
        self.balance_experts(extra)
        return StepOutput(loss, grad_norm.detach().cpu(), extra)

    def _forward_backward(self, micro: MicroBatch) -> torch.Tensor:
        loss = self.engine(micro.inputs, micro.labels)
        # DeepSpeed divides by the accumulation steps itself, so it gets the weighted loss (base.py: loss_weights;
        # exactly the loss when every micro batch counts the same labels).
        self.engine.backward(loss if micro.weight is None else loss * micro.weight)
        self.engine.step()  # optimizer + lr schedule only at the accumulation boundary
        return loss.detach()

    def step_is_finite(self, out: StepOutput) -> torch.Tensor:
        if self.cfg.trainer.precision == "fp16":  # DeepSpeed's loss scaler skips overflowing steps itself
            return torch.isfinite(out.loss).all()
        return super().step_is_finite(out)

    def eval_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        with autocast(self.cfg.trainer.precision, self.env.device):
            return self.engine(inputs, labels)

    def kv_cache_model(self) -> Optional[nn.Module]:
        return self.engine.module  # ZeRO-3 gathers the partitions in the module's own forward hooks

    @property
    def forward_is_collective(self) -> bool:
        return self.dims.cfg.zero_stage == 3 or self.dims.ep > 1  # ZeRO-3 gathers parameters in its forward

    def _row_shards(self, full: torch.Tensor) -> torch.Tensor:
        return row_shards(full, self.mesh)

    def model_state_dict(self) -> dict[str, Any]:
        return full_master_weights(self.engine, self._row_shards)  # a collective: every rank gathers

    def load_model_state_dict(self, state: dict[str, Any]) -> None:
        load_master_weights(self.engine, state)

    def load_state_dict(self, state: dict[str, Any], directory: Path) -> None:
        super().load_state_dict(state, directory)
        # DeepSpeed's own counters (its logging and boundary bookkeeping; AdamW's count is the optimizer state's).
        self.engine.global_steps = self.schedulers.steps_done
        self.engine.global_samples = self.schedulers.steps_done * self.engine.train_batch_size()
