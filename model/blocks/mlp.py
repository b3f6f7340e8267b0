"""Dense feed-forward: SwiGLU (Llama/Mistral), GeGLU (Gemma: a tanh-GELU gate) or tanh-GELU (GPT-2's gelu_new)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import MLP_TYPES


class FeedForward(nn.Module):
    """Gated (SwiGLU/GeGLU): w2(act(w1 x) * w3 x). GELU: w2(gelu_tanh(w1 x)), no w3."""

    def __init__(self, dim: int, hidden_dim: int, *, mlp_type: str = "swiglu", bias: bool = False) -> None:
        super().__init__()
        if mlp_type not in MLP_TYPES:
            raise ValueError(f"model.mlp_type={mlp_type!r} is not one of {list(MLP_TYPES)}")
        self.mlp_type = mlp_type
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden_dim, bias=bias) if mlp_type != "gelu" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp_type == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        if self.mlp_type == "geglu":
            return self.w2(F.gelu(self.w1(x), approximate="tanh") * self.w3(x))
        return self.w2(F.gelu(self.w1(x), approximate="tanh"))
