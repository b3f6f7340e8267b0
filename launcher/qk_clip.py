"""QK-clip (MuonClip, Kimi K2): keep attention logits below `optim.muon.qk_clip_tau` by shrinking W_q and W_k.

After each optimizer step, every head h whose largest pre-softmax logit in the step, m_h (recorded by the attention
modules, model/blocks/attention.py), exceeded tau gets gamma_h = tau / m_h (1 otherwise); its rows of W_q and W_k
are rescaled so that its logits q_h.k scale by exactly gamma_h (logits are bilinear in W_q and W_k; RoPE rotates
and does not change that). Multi-head attention splits it evenly, sqrt(gamma_h) on each. Under grouped KV heads a
key head serves several query heads, so it takes sqrt(g) with g the smallest gamma of its group, and each query
head gamma_h / sqrt(g): every head's logits still scale by its own gamma_h. Biases of W_q/W_k scale with their rows.

Each rank records the maxima of its own batch; one all-reduce (MAX) over the world makes them the global batch's,
so every rank applies the same factors and the result equals one process's. The factors multiply every step (1
where nothing is clipped): no host sync. Parameters sharded by FSDP/HSDP are DTensors split along their rows
(dim 0); each rank scales the rows it holds. Tensor, context and pipeline parallel are refused by
launcher/validation.py (heads, sequences or layers would live on other ranks).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from model.blocks.attention import Attention


def _scale_rows(param: torch.Tensor, factors: torch.Tensor) -> None:
    """param[i, ...] *= factors[i] (factors over the full parameter's rows), on whatever rows this rank holds."""
    shape = (-1,) + (1,) * (param.ndim - 1)
    if not isinstance(param, DTensor):
        param.mul_(factors.to(param.dtype).view(shape))
        return
    if any(isinstance(p, Shard) and p.dim != 0 for p in param.placements):
        raise NotImplementedError(f"QK-clip scales rows; this parameter is sharded as {param.placements}")
    local = distribute_tensor(factors.view(shape), param.device_mesh, param.placements, src_data_rank=None)
    param.to_local().mul_(local.to_local().to(param.dtype))


class QKClip:
    """Turns on max-logit recording in every attention module of `model_parts`, and clips after each step."""

    def __init__(self, model_parts: list[nn.Module], tau: float) -> None:
        self.tau = tau
        self.layers = [m for part in model_parts for m in part.modules() if isinstance(m, Attention)]
        if not self.layers:
            raise ValueError("optim.muon.qk_clip_tau>0 but the model has no MHA/GQA attention layer to clip")
        for layer in self.layers:
            layer.record_max_logit = True

    @classmethod
    def build(cls, model_parts: list[nn.Module], optim: Any) -> Optional["QKClip"]:
        if optim.name != "muon" or optim.muon.qk_clip_tau <= 0:
            return None
        return cls(model_parts, optim.muon.qk_clip_tau)

    def max_logits(self) -> Optional[torch.Tensor]:
        """[layers, heads]: the step's largest logit of every head over all ranks, or None before any forward."""
        if any(layer.max_logit is None for layer in self.layers):
            return None
        maxima = torch.stack([layer.max_logit for layer in self.layers])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        return maxima

    def clear(self) -> None:
        for layer in self.layers:
            layer.max_logit = None

    @torch.no_grad()
    def apply(self) -> Optional[torch.Tensor]:
        """Clip every layer from the recorded maxima, clear them, and return the maxima (for logging)."""
        maxima = self.max_logits()
        self.clear()
        if maxima is None:
            return None
        gammas = (self.tau / maxima.clamp(min=torch.finfo(torch.float32).tiny)).clamp(max=1.0)
        for layer, gamma in zip(self.layers, gammas):
            group = layer.n_heads // layer.n_kv_heads
            key_gamma = gamma.view(layer.n_kv_heads, group).amin(dim=1).sqrt()  # [kv heads]
            query = gamma / key_gamma.repeat_interleave(group)  # [heads]
            q_rows = query.repeat_interleave(layer.head_dim)
            k_rows = key_gamma.repeat_interleave(layer.head_dim)
            for linear, rows in ((layer.wq, q_rows), (layer.wk, k_rows)):
                _scale_rows(linear.weight, rows)
                if linear.bias is not None:
                    _scale_rows(linear.bias, rows)
        return maxima
