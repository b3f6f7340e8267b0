"""DeepSpeed ZeRO 1/2/3 (and ZeRO-Offload) as an alternative data-parallel engine (parallel.engine=deepspeed).

DeepSpeed's engine owns the optimizer, the backward (gradient partitioning and reduction) and the step, so the
launcher's ZeRO train module (launcher/train_modules/zero.py) builds it with `deepspeed.initialize` instead of
creating its own optimizer. Everything DeepSpeed needs is generated from our configs (`deepspeed_config`), so
there is no separate JSON to keep in sync. The optimizer is torch's AdamW through DeepSpeed's `torch_adam`
switch: DeepSpeed's fused and CPU Adam kernels are JIT-compiled C++/CUDA extensions (about a minute on first use)
and give the same result. On CPU, DS_ACCELERATOR=cpu (DeepSpeed then communicates over gloo) and
TORCH_EXTENSIONS_DIR pointing at a cache dir (`prepare_deepspeed_env`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from model.dtypes import PRECISIONS
from parallel.dims import ParallelDims

_NEVER = 2**31 - 1  # DeepSpeed's steps_per_print: we log through launcher.metrics, not DeepSpeed's logger


def prepare_deepspeed_env(device_type: str) -> None:
    """Environment DeepSpeed needs before its first use.

    - On CPU, DS_ACCELERATOR=cpu (DeepSpeed then communicates over gloo).
    - TORCH_EXTENSIONS_DIR defaults to .cache/torch_extensions under the working directory, so ops DeepSpeed
      JIT-builds are cached per checkout, not in $HOME.
    - LOOM_DEEPSPEED_SHM_COMM=0 marks DeepSpeed's shared-memory CPU all-reduce kernel unavailable: it only speeds
      up CPU collectives and costs a ~30-170 s C++ build on first use (tests set it; DeepSpeed has no switch).
    """
    if device_type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(".cache", "torch_extensions")))
    if os.environ.get("LOOM_DEEPSPEED_SHM_COMM", "1") == "0":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(
    dims: ParallelDims,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    precision: str,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_clip: float,
) -> dict[str, Any]:
    """The DeepSpeed config dict for this run (precision: model.dtypes' fp32 | bf16 | fp16; the layout and the
    batch plan were checked by the launcher's validation)."""
    cfg = dims.cfg
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": micro_batch_size * grad_accum_steps * dims.dp_degree,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": float(grad_clip),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(betas),
                "eps": eps,
                "weight_decay": weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        # DeepSpeed's mixed-precision sections are named like our precisions: {"bf16": {"enabled": ...}, ...}
        **{name: {"enabled": precision == name} for name in PRECISIONS if name != "fp32"},
        "zero_optimization": zero,
        # torch AdamW on offloaded (CPU) states instead of DeepSpeedCPUAdam, which would need a C++ build.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }


def full_model_state_dict(engine) -> dict[str, torch.Tensor]:
    """Unsharded model weights (ZeRO-3 partitions gathered), the same keys as the plain model's state_dict.
    A collective: every rank must call it."""
    import deepspeed

    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
