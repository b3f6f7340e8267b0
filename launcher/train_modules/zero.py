"""The DeepSpeed ZeRO 1/2/3 train module (parallel.engine=deepspeed): DeepSpeed's engine owns the optimizer, the
backward (gradient partitioning and reduction), clipping and the step; it also steps our lr schedule.

The engine is built with parallel.zero.deepspeed_config (batch sizes, precision, clipping, AdamW hyperparameters
and offload from our configs) and our AdamW parameter groups (no decay on norms/embeddings, as launcher/optim.py
does). The plain model with its initial weights (the seed's, or `trainer.init_from`'s) comes from the base module
before DeepSpeed copies it into its partitions; the step's micro batches and the model's auxiliary losses go
through the base module's `accumulate`, so ZeRO logs the MoE and MTP figures the torch layouts log.
Checkpoints hold the full model weights under "model" like every layout (so HF export, init_from and other layouts
read them) plus DeepSpeed's own partitioned state (`save_native`, in the subdirectory deepspeed/), which resumes
exactly under the same ZeRO stage and world size and reshards only through DeepSpeed's own tools.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from launcher.checkpoint import CheckpointError
from launcher.distributed import DistEnv
from launcher.optim import parameter_groups
from launcher.schedule import LRSchedulers
from launcher.train_modules.base import MicroBatch, StepOutput, TrainModule, autocast, initial_model
from launcher.validation import RunPlan
from parallel.zero import deepspeed_config, full_model_state_dict, prepare_deepspeed_env


class _EngineOptimizer:
    """The engine's optimizer in the containers' shape: DeepSpeed steps it; its state is checkpointed natively."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


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
    NATIVE_DIR = "deepspeed"
    TAG = "state"

    def __init__(self, plan: RunPlan, env: DistEnv, init_from: Optional[Path] = None) -> None:
        super().__init__(plan, env)
        prepare_deepspeed_env(env.device.type)
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
        self.optimizers = _EngineOptimizer(self.engine)
        self.engine.checkpoint_engine = _WeightsOnlyCheckpointEngine(self.engine.checkpoint_engine)

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        loss, extra = self.accumulate(inputs, labels, self._forward_backward)
        grad_norm = self.engine.get_global_grad_norm()  # DeepSpeed reads it to the host: its choice
        grad_norm = torch.as_tensor(math.nan if grad_norm is None else grad_norm, dtype=torch.float64)
        self.balance_experts(extra)
        return StepOutput(loss, grad_norm.detach().cpu(), extra)

    def _forward_backward(self, micro: MicroBatch) -> torch.Tensor:
        loss = self.engine(micro.inputs, micro.labels)
        self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps itself
        self.engine.step()  # optimizer + lr schedule only at the accumulation boundary
        return loss.detach()

    def step_is_finite(self, out: StepOutput) -> torch.Tensor:
        if self.cfg.trainer.precision == "fp16":  # DeepSpeed's loss scaler skips overflowing steps itself
            return torch.isfinite(out.loss).all()
        return super().step_is_finite(out)

    def eval_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        with autocast(self.cfg.trainer.precision, self.env.device):
            return self.engine(inputs, labels)

    def generation_model(self) -> tuple[Optional[nn.Module], str]:
        return self.engine.module, ""  # ZeRO-3 gathers the partitions in the module's own forward hooks

    @property
    def forward_is_collective(self) -> bool:
        return self.dims.cfg.zero_stage == 3 or self.dims.ep > 1  # ZeRO-3 gathers parameters in its forward

    def score_batch(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.forward_scores(self.engine.module, tokens, targets)

    def model_state_dict(self) -> dict[str, Any]:
        return full_model_state_dict(self.engine)  # a collective: every rank gathers

    def load_model_state_dict(self, state: dict[str, Any]) -> None:
        """Weights come back with DeepSpeed's own state (load_native): its fp32 partitions are the master copy."""

    def save_native(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / self.NATIVE_DIR), tag=self.TAG, save_latest=False)

    def load_native(self, directory: Path) -> None:
        source = directory / self.NATIVE_DIR
        if not (source / self.TAG).is_dir():
            raise CheckpointError(
                f"{directory}: no DeepSpeed state in {source} (saved by a torch layout?): ZeRO resumes only its own "
                f"checkpoints; start from its weights with trainer.init_from={directory} trainer.resume=never"
            )
        load_path, _ = self.engine.load_checkpoint(
            str(source), tag=self.TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise CheckpointError(f"{source}: DeepSpeed could not load its checkpoint (tag {self.TAG!r})")
