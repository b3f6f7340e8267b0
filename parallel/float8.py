"""Float8 training of the transformer blocks' Linear layers through torchao (`parallel.float8`).

torchao's `convert_to_float8_training` swaps each chosen `nn.Linear` for a `Float8Linear` that casts input,
weight and output gradient to float8 with dynamic scales (per tensor, or per row with `rowwise`) and multiplies
with `torch._scaled_mm`; master weights, optimizer state and everything outside those matmuls keep their dtype.
The swap keeps the module and parameter names, so checkpoints are the same as without float8. Written as an
option, not a default: it pays only with `torch.compile` (which fuses the casts) on GPUs with float8 tensor cores
(compute capability 8.9+: Ada, Hopper such as the H100/H200, Blackwell), and only for matmuls big enough that the
casts are cheap next to them.

Left in higher precision: the output head (its logits feed the loss; torchtitan leaves it too), MoE routers and
grouped experts, and any Linear whose dimensions are not multiples of 16 (what `_scaled_mm` accepts).
On CPU torch has a `_scaled_mm` as well, so the same path runs (slowly) there and is tested; a GPU without
float8 support is refused with its name and compute capability.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from parallel.config import ParallelConfig

MIN_CUDA_CAPABILITY = (8, 9)
_SKIPPED_NAMES = ("router",)  # MoE routers: tiny, and their logits pick experts


def float8_supported(device_type: str) -> Optional[str]:
    """None when float8 matmuls run on this device type, else why not (said to the user as is)."""
    if device_type == "cuda":
        capability = torch.cuda.get_device_capability()
        if capability < MIN_CUDA_CAPABILITY:
            return (
                f"{torch.cuda.get_device_name()} has compute capability {capability[0]}.{capability[1]}; float8 "
                f"matmuls need {MIN_CUDA_CAPABILITY[0]}.{MIN_CUDA_CAPABILITY[1]}+ (Ada, Hopper, Blackwell)"
            )
        return None
    if device_type == "cpu":
        try:  # torch's CPU float8 matmul: present in recent releases, absent in older ones
            a = torch.ones(16, 16).to(torch.float8_e4m3fn)
            torch._scaled_mm(a, a.t(), scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError) as exc:
            return f"torch {torch.__version__} has no CPU float8 matmul ({str(exc).splitlines()[0]})"
        return None
    return f"float8 training is not supported on device type {device_type!r}"


def _import_torchao():
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as exc:
        raise ValueError(f"parallel.float8 needs torchao (`pip install torchao`, tested with 0.18): {exc}") from exc
    return Float8LinearConfig, convert_to_float8_training


def float8_eligible(module: nn.Module, fqn: str) -> bool:
    """The Linear layers of the transformer blocks, except routers, with both dimensions multiples of 16."""
    if not isinstance(module, nn.Linear) or not fqn.startswith("layers."):
        return False
    if fqn.rsplit(".", 1)[-1] in _SKIPPED_NAMES:
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_float8(model: nn.Module, cfg: "ParallelConfig", *, mesh: Optional["DeviceMesh"] = None) -> nn.Module:
    """Swap the eligible Linear layers for torchao's Float8Linear (in place; the model may be on the meta device).

    The device is the mesh's, or, with no mesh (one process, built in place), that of the model's parameters. The
    recipe and the layouts float8 is not wired for were checked with the layout (parallel/dims.py)."""
    device_type = mesh.device_type if mesh is not None else next(model.parameters()).device.type
    problem = float8_supported(device_type)
    if problem is not None:
        raise ValueError(f"parallel.float8={cfg.float8}: {problem}; set parallel.float8=none")
    config_cls, convert = _import_torchao()
    converted = [name for name, module in model.named_modules() if float8_eligible(module, name)]
    if not converted:
        raise ValueError(
            f"parallel.float8={cfg.float8}: no Linear layer in the blocks has dimensions that are "
            f"multiples of 16, so nothing would run in float8; set parallel.float8=none"
        )
    convert(model, config=config_cls.from_recipe_name(cfg.float8), module_filter_fn=float8_eligible)
    return model
