"""AdamW with decoupled weight decay applied only to matrices that are not embeddings.

Decaying norm gains, biases and embedding rows pulls them towards zero for no regularisation benefit (the usual
practice since GPT-2/Llama); both exclusions are switchable in the `optim` config.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def parameter_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed and not decayed. Tied parameters are counted once (by identity)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_embedding = isinstance(module, nn.Embedding)
            is_vector = param.ndim < 2  # norm gains and biases
            if (is_embedding and not cfg.decay_embeddings) or (is_vector and not cfg.decay_norms_and_biases):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: Any, device_type: str) -> torch.optim.Optimizer:
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(
        parameter_groups(model, cfg),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
        foreach=None if fused else True,
    )


class StageOptimizers:
    """One AdamW per pipeline stage module of this rank, stepped together.

    Under pipeline parallel a rank may hold several stage modules (interleaved and V schedules). Each gets its own
    optimizer, so torch.distributed.checkpoint.state_dict can name its state by that module's parameter names (a
    stage keeps the full model's names, so they are layout-free); one optimizer over several modules would have no
    module to name them by. This container has the part of the torch.optim.Optimizer surface the training step
    uses (step, zero_grad, param_groups); checkpoints go through `optimizers` one by one."""

    def __init__(self, modules: list[nn.Module], cfg: Any, device_type: str) -> None:
        if not modules:
            raise ValueError("StageOptimizers needs at least one stage module")
        self.modules = list(modules)
        self.optimizers = [build_optimizer(module, cfg, device_type) for module in self.modules]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)
