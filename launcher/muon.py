"""Muon (Keller Jordan, 2024; "Muon is Scalable for LLM Training", Moonshot 2025) for laid-out models.

Muon updates a hidden weight matrix with the orthogonalised Nesterov momentum of its gradient: the momentum buffer
B <- mu B + (1 - mu) g, the update U = g + mu (B - g) (Nesterov, as torch writes it with lerp), O = NS(U) (a
quintic Newton-Schulz iteration pushing every singular value of U towards 1), then decoupled weight decay and
W <- W - lr' O, where lr' rescales the lr by the matrix shape (`lr_rule`): "match_rms_adamw" (Moonshot,
0.2 sqrt(max(A, B))) gives the update AdamW's typical RMS so AdamW's lr and weight decay carry over; "original"
(Keller Jordan, sqrt(max(1, A/B))) wants a larger lr (about 0.02).

This is torch.optim.Muon's algorithm, step for step (the same state name, `momentum_buffer`; the same lr rules; a
test checks equality on plain matrices). What torch's class lacks for this framework, and this one adds:
- sharded parameters: under FSDP/HSDP, TP and EP a parameter is a DTensor holding one slice of the matrix, and
  the orthogonalisation needs the whole matrix. The scheme: momentum stays sharded like the gradient (elementwise),
  the Nesterov update is gathered whole (`full_tensor`, an all-gather over every mesh dim it is sharded on), every
  rank orthogonalises the same whole matrix (redundant compute, no further communication) and keeps its own slice
  (`distribute_tensor(..., src_data_rank=None)` slices locally). Every rank therefore computes what one process
  computes. A parameter sharded only along a leading (expert) dim is orthogonalised locally: its matrices are whole.
- stacked expert weights [experts, out, in]: each expert's matrix is orthogonalised apart (a batched iteration),
  as if each expert were its own Linear; the lr rule uses the [out, in] shape.
- the iteration's dtype (`ns_dtype`, fp32 | bf16 | fp16): torch always runs it in bfloat16; fp32 costs more
  matmul time on GPU but makes the update reproducible to float32 rounding (the parity tests use it).
AdamW for everything else (embeddings, the output head, norms, biases, vectors) is a separate torch.optim.AdamW
(launcher/optim.py builds both; `Optimizers` checkpoints them together by parameter name).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from launcher.config import MUON_LR_RULES as LR_RULES
from model.dtypes import canonical_precision, torch_dtype

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic (torch.optim.Muon's defaults)
NS_EPS = 1e-7


def newton_schulz(matrix: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthogonalised `matrix` (approximately U V^T of its SVD), batched over leading dims, in `dtype`.

    Each matrix is scaled to Frobenius norm 1 (so its spectral norm is at most 1), turned wide (the Gram matrix is
    the smaller one), and run through X <- a X + (b A + c A^2) X with A = X X^T."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=NS_EPS)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def lr_scale(shape: torch.Size, rule: str) -> float:
    """The factor Muon applies to the lr of a matrix of `shape` (the last two dims: out, in)."""
    rows, cols = shape[-2], shape[-1]
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    raise ValueError(f"optim.muon.lr_rule={rule!r} is not one of {LR_RULES}")


def _matrices_are_local(update: DTensor) -> bool:
    """True when the DTensor is sharded only along leading (expert) dims, so each rank holds whole matrices."""
    last_two = update.ndim - 2
    return all(not isinstance(p, Shard) or p.dim < last_two for p in update.placements)


def orthogonalise(update: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """newton_schulz of `update` as one process would compute it, returned in the update's dtype and layout."""
    if not isinstance(update, DTensor):
        return newton_schulz(update, steps, dtype).to(update.dtype)
    if _matrices_are_local(update):
        local = newton_schulz(update.to_local(), steps, dtype).to(update.dtype)
        return DTensor.from_local(
            local, update.device_mesh, update.placements, shape=update.shape, stride=update.stride()
        )
    whole = newton_schulz(update.full_tensor(), steps, dtype).to(update.dtype)
    return distribute_tensor(whole, update.device_mesh, update.placements, src_data_rank=None)


class Muon(torch.optim.Optimizer):
    """Muon over 2-D matrices and 3-D stacks of expert matrices, plain tensors or DTensors (module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        weight_decay: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str = "fp32",
        lr_rule: str = "match_rms_adamw",
    ) -> None:
        if lr_rule not in LR_RULES:
            raise ValueError(f"optim.muon.lr_rule={lr_rule!r} is not one of {LR_RULES}")
        ns_dtype = canonical_precision(ns_dtype, "optim.muon.ns_dtype")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            lr_rule=lr_rule,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for param in group["params"]:
                if param.ndim not in (2, 3):
                    raise ValueError(
                        f"Muon takes matrices and stacks of matrices, not a {param.ndim}-D parameter "
                        f"of shape {tuple(param.shape)}: route it to AdamW"
                    )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            dtype = torch_dtype(group["ns_dtype"])
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                ortho = orthogonalise(update, group["ns_steps"], dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(ortho, alpha=-lr * lr_scale(param.shape, group["lr_rule"]))
        return loss
