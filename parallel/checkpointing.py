"""Activation checkpointing: trade recomputation in backward for activation memory, per transformer block.

- full: every `ac_every`-th block keeps only its input; everything inside is recomputed in backward.
- selective: every block saves the outputs of the chosen expensive ops (matmuls, attention, and the tensor-parallel
  reduce-scatters whose recomputation would mean communicating again) and recomputes the cheap rest (norms,
  activations, RoPE, residual adds), through torch.utils.checkpoint's selective checkpoint policies.

Blocks are wrapped with torch's checkpoint_wrapper (what torchtitan uses); its `_checkpoint_wrapped_module.`
prefix is removed again by the wrapper's state_dict hooks and by torch.distributed.checkpoint.state_dict, so
checkpoints and HF exports keep the plain parameter names.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from parallel.config import ParallelConfig


def _ops(*names: str, namespace=None) -> list:
    """The named aten overloads that exist in this torch build (SDPA kernels differ between versions)."""
    namespace = namespace if namespace is not None else torch.ops.aten
    found = []
    for name in names:
        packet = getattr(namespace, name, None)
        if packet is not None:
            found.append(packet.default)
    return found


def _saved_ops(selection: str) -> set:
    chosen = {op.strip() for op in selection.split(",") if op.strip()}
    ops: set = set(_ops("reduce_scatter_tensor", namespace=torch.ops._c10d_functional))
    if "mm" in chosen:
        ops.update(_ops("mm", "addmm", "bmm"))
    if "sdpa" in chosen:
        ops.update(
            _ops(
                "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention",
                "_scaled_dot_product_flash_attention_for_cpu",
            )
        )
    return ops


def _selective_policy(saved: set):
    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _selective_context(saved: set):
    return create_selective_checkpoint_contexts(_selective_policy(saved))


def apply_activation_checkpointing(model: nn.Module, cfg: ParallelConfig) -> nn.Module:
    """Wrap blocks of `model.layers` in place according to parallel.ac_mode / ac_every / ac_selective_ops."""
    if cfg.ac_mode == "none":
        return model
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError("activation checkpointing needs a model with a `layers` ModuleDict of blocks")
    if cfg.ac_mode == "full":
        for index, (name, block) in enumerate(list(layers.items())):
            if index % cfg.ac_every == 0:
                layers[name] = checkpoint_wrapper(block, preserve_rng_state=True)
        return model
    if cfg.ac_mode == "selective":
        context_fn = partial(_selective_context, _saved_ops(cfg.ac_selective_ops))
        for name, block in list(layers.items()):
            layers[name] = checkpoint_wrapper(block, context_fn=context_fn, preserve_rng_state=True)
        return model
    raise ValueError(f"parallel.ac_mode={cfg.ac_mode!r} is not one of none|full|selective")
