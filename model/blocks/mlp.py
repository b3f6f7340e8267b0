"""Dense feed-forward: SwiGLU (Llama/Mistral), GeGLU (Gemma: a tanh-GELU gate) or tanh-GELU (GPT-2's gelu_new)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks.projections import ProjectionGroups
from model.config import MLP_TYPES


class FeedForward(ProjectionGroups, nn.Module):
    """Gated (SwiGLU/GeGLU): w2(act(w1 x) * w3 x), w1 and w3 as one matmul when `fused`. GELU: w2(gelu_tanh(w1 x)),
    no w3."""

    def __init__(
        self, dim: int, hidden_dim: int, *, mlp_type: str = "swiglu", bias: bool = False, fused: bool = False
    ) -> None:
        super().__init__()
        if mlp_type not in MLP_TYPES:
            raise ValueError(f"model.mlp_type={mlp_type!r} is not one of {list(MLP_TYPES)}")
        self.mlp_type = mlp_type
        self.fused_projections = fused and mlp_type != "gelu"
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden_dim, bias=bias) if mlp_type != "gelu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp_type == "gelu":
            return self.w2(F.gelu(self.w1(x), approximate="tanh"))
        gate, up = self._project(x, (self.w1, self.w3))
        if self.mlp_type == "swiglu":
            return self.w2(F.silu(gate) * up)
        return self.w2(F.gelu(gate, approximate="tanh") * up)
