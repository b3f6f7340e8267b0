"""Tensor parallel (Megatron column/row splits) with sequence parallel, as DTensor `parallelize_module` plans.

Per block: wq/wk/wv and w1/w3 split by output features (ColwiseParallel), wo and w2 by input features
(RowwiseParallel), so each rank computes n_heads/tp heads and hidden/tp FFN channels and a block needs one
reduction per sub-layer. With sequence parallel the norms and the residual stream between blocks are sharded along
the sequence (Shard(1)); the reductions become reduce-scatters and the all-reduces all-gathers.

The embedding is vocab-parallel (RowwiseParallel on tok_embeddings: each rank owns vocab/tp rows) and the output
head is column-parallel, producing vocab-sharded logits (Shard(-1)) that `loss_parallel()` turns into a
cross-entropy without gathering the vocabulary; so under TP the trainer computes the loss outside the model (see
parallel.compute_loss / loss_context).

With sequence parallel the residual stream stays a DTensor (use_local_output=False on the embedding and on wo/w2)
so the model, which reads the sequence length from `h.shape[1]` to build RoPE positions, sees the global shape.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from parallel.config import ParallelConfig

if TYPE_CHECKING:
    from model.config import ModelConfig


def apply_tensor_parallel(
    model: nn.Module, tp_mesh: DeviceMesh, cfg: ParallelConfig, model_cfg: Optional["ModelConfig"] = None
) -> nn.Module:
    sp = cfg.sequence_parallel
    stream = Shard(1) if sp else Replicate()  # layout of the residual stream between sub-layers

    top_plan: dict[str, object] = {}
    if getattr(model, "tok_embeddings", None) is not None:
        top_plan["tok_embeddings"] = RowwiseParallel(
            input_layouts=Replicate(), output_layouts=stream, use_local_output=not sp
        )
    if getattr(model, "norm", None) is not None and sp and not isinstance(model.norm, nn.Identity):
        top_plan["norm"] = SequenceParallel()
    if getattr(model, "output", None) is not None:
        top_plan["output"] = ColwiseParallel(
            input_layouts=stream,
            output_layouts=Shard(-1) if cfg.loss_parallel else Replicate(),
            use_local_output=not cfg.loss_parallel,
        )
    if top_plan:
        parallelize_module(model, tp_mesh, top_plan)

    for block in model.layers.values():
        parallelize_module(block, tp_mesh, _block_plan(block, sp, stream))

    tied = getattr(model, "output", None) is not None and getattr(model, "tok_embeddings", None) is not None
    if tied and model_cfg is not None and model_cfg.tie_embeddings:
        # Both plans shard the [vocab, dim] weight as Shard(0) but each made its own Parameter: tie them again.
        model.output.weight = model.tok_embeddings.weight
    return model


def _block_plan(block: nn.Module, sp: bool, stream) -> dict[str, object]:
    if getattr(block, "moe", None) is not None:
        raise ValueError("tensor parallel of MoE blocks is not supported: use parallel.ep, or parallel.tp=1")
    if getattr(block.attention, "use_alibi", False):
        # Attention.alibi_slopes holds one slope per global head, but each rank computes n_heads/tp local heads.
        raise ValueError("tensor parallel does not support model.pos_embedding=alibi: use rope, or parallel.tp=1")
    # Without SP the stream is a plain (replicated) tensor, so plain norms work unchanged; with SP it is a
    # Shard(1) DTensor and the norms become SequenceParallel.
    local = not sp
    plan: dict[str, object] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=stream, use_local_output=local),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=stream, use_local_output=local),
    }
    if getattr(block.feed_forward, "w3", None) is not None:
        plan["feed_forward.w3"] = ColwiseParallel()
    if block.attention.q_norm is not None:
        # QK-norm runs on the local heads [B, T, heads/tp, head_dim]: its weight is replicated and its gradient
        # must be summed over the tp ranks, which SequenceParallel on the head dim does.
        plan["attention.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["attention.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    if sp:
        # attention(x, rope, ...) and feed_forward(x) need x gathered along the sequence.
        plan["attention"] = PrepareModuleInput(input_layouts=(stream, None), desired_input_layouts=(Replicate(), None))
        plan["feed_forward"] = PrepareModuleInput(input_layouts=(stream,), desired_input_layouts=(Replicate(),))
        norms = ["attention_norm", "ffn_norm"]
        if hasattr(block, "post_attention_norm"):
            norms += ["post_attention_norm", "post_ffn_norm"]
        for name in norms:
            plan[name] = SequenceParallel()
    return plan
