"""Normalisation layers chosen by `ModelConfig.norm_type`.

RMSNorm is written by hand rather than using `torch.nn.RMSNorm`/`F.rms_norm`: Hugging Face Llama/Mistral compute
the statistics in fp32 and cast back *before* multiplying by the weight, and parity with those checkpoints needs
exactly that order of operations (the fused op rounds differently in bf16). Gemma's variant stores the weight as
an offset from one (`unit_offset`: scale by 1 + w, w initialised at 0) and multiplies in fp32 *before* the cast.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, *, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (x32 * (1.0 + self.weight.float())).to(input_dtype)
        return self.weight * x32.to(input_dtype)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}" + (", unit_offset" if self.unit_offset else "")


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` with the bias optional (GPT-2 has one, many newer models do not)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(dim, eps=eps, bias=bias)


def build_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = cfg.dim if dim is None else dim
    if cfg.norm_type == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps, unit_offset=cfg.rmsnorm_unit_offset)
    if cfg.norm_type == "layernorm":
        return LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.norm_bias)
    raise ValueError(f"model.norm_type={cfg.norm_type!r} is not one of ['rmsnorm', 'layernorm']")
