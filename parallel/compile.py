"""torch.compile per transformer block rather than the whole model.

All blocks share one compiled graph (they have identical code and shapes), so compile time stays that of one block
however deep the model is, and FSDP/DDP hooks between blocks stay outside the graphs. `Module.compile()` compiles
in place, so parameter names (and hence checkpoints) do not change. Applied after activation checkpointing so the
checkpointed block is what gets compiled, as torchtitan does.
"""
from __future__ import annotations

from torch import nn

from parallel.config import ParallelConfig


def apply_compile(model: nn.Module, cfg: ParallelConfig) -> nn.Module:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError("parallel.compile=true needs a model with a `layers` ModuleDict of blocks")
    for block in layers.values():
        block.compile(backend=cfg.compile_backend, fullgraph=False)
    return model
