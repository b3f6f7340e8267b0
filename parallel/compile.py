"""torch.compile per transformer block, or of the whole model (`parallel.compile_scope`).

- `block` (default): all blocks share one compiled graph (they have identical code and shapes), so compile time
  stays that of one block however deep the model is, and FSDP/DDP hooks between blocks stay outside the graphs.
  Applied after activation checkpointing so the checkpointed block is what gets compiled, as torchtitan does.
- `model`: one graph from the token embedding to the loss, so the embedding, final norm, output head and
  cross-entropy are fused with their neighbours too (what a hand-written single-GPU loop gets from
  `torch.compile(model)`). Compile time grows with depth; FSDP2's per-block hooks are not traced (dynamo skips
  them), so under FSDP the graph breaks at each block's boundary and the blocks still compile one by one.

`Module.compile()` compiles in place, so parameter names (and hence checkpoints) do not change either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from parallel.config import ParallelConfig


def apply_compile(model: nn.Module, cfg: "ParallelConfig") -> nn.Module:
    """The scope (parallel.compile_scope, one of parallel.config.COMPILE_SCOPES) was checked with the layout."""
    if cfg.compile_scope == "model":
        model.compile(backend=cfg.compile_backend, fullgraph=False)
        return model
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(
            "parallel.compile=true with compile_scope=block needs a model with a `layers` ModuleDict "
            "of blocks (or set parallel.compile_scope=model)"
        )
    for block in layers.values():
        block.compile(backend=cfg.compile_backend, fullgraph=False)
    return model
