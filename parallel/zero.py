"""DeepSpeed ZeRO 1/2/3 (and ZeRO-Offload) as an alternative data-parallel engine (parallel.engine=deepspeed).

DeepSpeed's engine owns the optimizer, the backward (gradient partitioning and reduction) and the step, so the
trainer builds it here instead of creating its own optimizer:

    engine = initialize_zero(model, pcfg, dims, micro_batch_size=..., grad_accum_steps=..., optimizer=settings,
                             precision="bfloat16")
    loss = engine(tokens, labels)      # the model's own forward, on this rank's micro-batch
    engine.backward(loss)              # scaled by 1/grad_accum_steps inside DeepSpeed
    engine.step()                      # steps the optimizer (and lr_scheduler) at accumulation boundaries

Everything DeepSpeed needs is generated from our configs (`deepspeed_config`), so there is no separate JSON to
keep in sync. The optimizer is torch's AdamW through DeepSpeed's `torch_adam` switch: DeepSpeed's fused and CPU
Adam kernels are JIT-compiled C++/CUDA extensions (about a minute on first use) and give the same result.
On CPU set DS_ACCELERATOR=cpu (DeepSpeed then communicates over gloo) and TORCH_EXTENSIONS_DIR to a cache dir.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from parallel.config import ParallelConfig
from parallel.dims import ParallelDims

_PRECISIONS = ("float32", "bfloat16", "float16")
_NEVER = 2**31 - 1  # DeepSpeed's steps_per_print: we log through launcher.metrics, not DeepSpeed's logger


@dataclass
class OptimizerSettings:
    lr: float = 3e-4
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global gradient-norm clipping; 0 disables it


def deepspeed_config(
    cfg: ParallelConfig,
    dims: ParallelDims,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    optimizer: OptimizerSettings,
    precision: str = "bfloat16",
) -> dict[str, Any]:
    """The DeepSpeed config dict for this run; raises ValueError naming the key and the fix."""
    if cfg.engine != "deepspeed" or cfg.zero_stage not in (1, 2, 3):
        raise ValueError(
            f"parallel.engine={cfg.engine!r}, zero_stage={cfg.zero_stage}: DeepSpeed ZeRO needs engine=deepspeed and "
            f"zero_stage 1, 2 or 3 (configs/parallel/zero1.yaml ...)"
        )
    if precision not in _PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(_PRECISIONS)}")
    if micro_batch_size < 1 or grad_accum_steps < 1:
        raise ValueError(
            f"micro batch size ({micro_batch_size}) and grad accumulation ({grad_accum_steps}) must be >= 1"
        )
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": micro_batch_size * grad_accum_steps * dims.dp_degree,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": float(optimizer.grad_clip),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optimizer.lr,
                "betas": list(optimizer.betas),
                "eps": optimizer.eps,
                "weight_decay": optimizer.weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        "bf16": {"enabled": precision == "bfloat16"},
        "fp16": {"enabled": precision == "float16"},
        "zero_optimization": zero,
        # torch AdamW on offloaded (CPU) states instead of DeepSpeedCPUAdam, which would need a C++ build.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }


def initialize_zero(
    model: nn.Module,
    cfg: ParallelConfig,
    dims: ParallelDims,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    optimizer: OptimizerSettings,
    precision: str = "bfloat16",
    lr_scheduler: Optional[Callable] = None,
):
    """deepspeed.initialize on the already-initialised torch.distributed world; returns the engine."""
    import deepspeed

    config = deepspeed_config(
        cfg, dims, micro_batch_size=micro_batch_size, grad_accum_steps=grad_accum_steps, optimizer=optimizer,
        precision=precision,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=list(model.parameters()), config=config, lr_scheduler=lr_scheduler,
        dist_init_required=False,
    )
    return engine


def full_model_state_dict(engine) -> dict[str, torch.Tensor]:
    """Unsharded model weights (ZeRO-3 partitions gathered), the same keys as the plain model's state_dict.
    A collective: every rank must call it."""
    import deepspeed

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
