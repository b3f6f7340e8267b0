"""Several Linear layers over the same input as one matmul (`model.fused_projections`): q/k/v, and gate/up.

The layers stay separate `nn.Linear` modules, so parameter names, shapes, initialisation, checkpoints, the Hugging
Face mapping and FSDP's units are those of the unfused model, and a checkpoint moves freely between the two. Only
the forward differs: their weights (and biases) are concatenated and multiplied once, so the input is read once and
the matmul is wider. The concatenation copies the weights every forward (3 x dim^2 elements for q/k/v at most),
small next to the matmul itself at training batch sizes; the GPU run (benchmarks/gpu_check.py) decides whether it
pays. Tensor parallel replaces `_project` to concatenate each rank's shards instead (parallel/tensor.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def linear_group(x: torch.Tensor, linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
    """(linear(x) for linear in linears), computed as one matmul over their concatenated weights."""
    weights = [linear.weight for linear in linears]
    biases = [linear.bias for linear in linears]
    bias = torch.cat(biases) if biases[0] is not None else None
    out = F.linear(x, torch.cat(weights), bias)
    return out.split([w.shape[0] for w in weights], dim=-1)


class ProjectionGroups:
    """Mixin of modules with Linear layers sharing an input (attention's q/k/v, the gated MLP's gate/up)."""

    fused_projections: bool = False

    def _project(self, x: torch.Tensor, linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
        """`x` through each of `linears`: one matmul when `fused_projections`, else one each."""
        if self.fused_projections:
            return linear_group(x, linears)
        return tuple(linear(x) for linear in linears)
