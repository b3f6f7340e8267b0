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

Multi-head latent attention: the per-head up-projections (wq or wq_b, wkv_b) are column-parallel and wo
row-parallel, so each rank holds n_heads/tp heads; the low-rank down-projections (wq_a, wkv_a) and their norms
stay replicated (they are small, and their outputs feed every head). The rotary key part every head shares
(`shared_rope_key`) gets its gradient summed over the tp ranks, each of which used it for its own heads only.

Fused projections (model.fused_projections): wq/wk/wv and w1/w3 are sharded exactly as when unfused; the module's
`_project` is replaced so each rank concatenates its own shards (its heads' q, k and v rows; its channels' gate and
up rows) and multiplies once, with one all-reduce of the input gradient instead of one per projection.

MoE: routing, sorting and the weighted combine run replicated on every rank (the router, the shared-expert gate
and the selection bias are replicated); the routed experts' hidden dimension is split over the tp ranks
(w1/w3 Shard(1), w2 Shard(2)), their tokens enter with an identity-forward / all-reduce-backward and their
partial outputs are all-reduced; the shared experts are column/row-parallel like a dense FFN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.func import functional_call

from model.blocks.moe import EXPERT_WEIGHTS
from model.blocks.projections import linear_group
from parallel.config import ParallelConfig

if TYPE_CHECKING:
    from model.config import ModelConfig


def apply_tensor_parallel(
    model: nn.Module, tp_mesh: DeviceMesh, cfg: ParallelConfig, model_cfg: Optional["ModelConfig"] = None
) -> nn.Module:
    sp = cfg.sequence_parallel
    stream = Shard(1) if sp else Replicate()  # layout of the residual stream between sub-layers
    # torch's parallel styles make new Parameters that train; frozen ones (LoRA's base) must stay frozen.
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}

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
        _place_lora_adapters(block, tp_mesh)
        for part in (block.attention, getattr(block, "feed_forward", None)):
            if getattr(part, "fused_projections", False):
                _fuse_local_shards(part, tp_mesh)
        if getattr(block.attention, "shared_rope_key", None) is not None:
            _sum_gradient_over(block.attention.shared_rope_key, tp_mesh)
        if getattr(block, "moe", None) is not None:
            _shard_experts_hidden(block.moe.experts, tp_mesh)

    tied = getattr(model, "output", None) is not None and getattr(model, "tok_embeddings", None) is not None
    if tied and model_cfg is not None and model_cfg.tie_embeddings:
        # Both plans shard the [vocab, dim] weight as Shard(0) but each made its own Parameter: tie them again.
        model.output.weight = model.tok_embeddings.weight
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return model


def _place_lora_adapters(module: nn.Module, mesh: DeviceMesh) -> None:
    """LoRA adapters (model/lora.py) beside their sharded base weight: a column-parallel base (Shard(0), output
    features) gets B [out, r] by rows and A [r, in] replicated; a row-parallel one (Shard(1), input features) A by
    columns and B replicated. Each rank's adapter then yields the same shard of the output as its base weight."""
    from model.lora import lora_modules

    for _, linear in lora_modules(module):
        if not isinstance(linear.weight, DTensor):
            continue
        colwise = linear.weight.placements[0] == Shard(0)
        placements = {"lora_A": Replicate() if colwise else Shard(1), "lora_B": Shard(0) if colwise else Replicate()}
        for name, placement in placements.items():
            param = getattr(linear, name)
            if isinstance(param, DTensor) and param.placements[0] == placement:
                placed = param
            elif isinstance(param, DTensor):  # ColwiseParallel shards every parameter by rows
                full = (
                    torch.empty(param.shape, dtype=param.dtype, device="meta")
                    if param.is_meta
                    else param.full_tensor().detach()
                )
                placed = nn.Parameter(distribute_tensor(full, mesh, [placement]), requires_grad=param.requires_grad)
            else:
                placed = nn.Parameter(
                    distribute_tensor(param.detach(), mesh, [placement]), requires_grad=param.requires_grad
                )
            setattr(linear, name, placed)
        linear.__class__ = _tensor_parallel_lora_class(type(linear))


class _ReplicatedGradient(torch.autograd.Function):
    """Identity on a replicated DTensor whose gradient arrives as Partial (each rank's sum over its own heads or
    channels): the backward reduces it to Replicate, so the gradient norm and the optimizer see the whole one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if isinstance(grad, DTensor) and any(p.is_partial() for p in grad.placements):
            grad = grad.redistribute(placements=[Replicate()] * len(grad.placements))
        return grad


class TensorParallelLoRA:
    """Mixin put in front of a LoRALinear whose adapters parallel/tensor.py placed: the replicated one's
    gradient is reduced in the backward (a class, not a tensor hook, so it survives materialising from meta)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapters = {}
        for name in ("lora_A", "lora_B"):
            param = getattr(self, name)
            replicated = all(p == Replicate() for p in param.placements)
            adapters[name] = _ReplicatedGradient.apply(param) if replicated and param.requires_grad else param
        return self.lora_forward(x, adapters["lora_A"], adapters["lora_B"])


def _tensor_parallel_lora_class(cls: type) -> type:
    if issubclass(cls, TensorParallelLoRA):
        return cls
    return type(f"TensorParallel{cls.__name__}", (TensorParallelLoRA, cls), {})


def _to_replicated_with_summed_grad(x: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Identity forward; backward all-reduces the gradient over `mesh` (each rank held a partial one)."""
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def _sum_gradient_over(module: nn.Module, mesh: DeviceMesh) -> None:
    module.register_forward_hook(lambda mod, inputs, output: _to_replicated_with_summed_grad(output, mesh))


class TensorParallelProjections:
    """Mixin put in front of a module with fused projections (model.blocks.projections.ProjectionGroups) whose
    Linear weights are column-parallel DTensors: one matmul over this rank's concatenated shards."""

    tp_mesh: DeviceMesh

    def _project(self, x: torch.Tensor, linears) -> tuple[torch.Tensor, ...]:
        # The input is replicated (a plain tensor, or a Replicate DTensor under sequence parallel); each rank's
        # gradient for it covers only its own heads/channels, so the backward sums them over the tp ranks.
        if isinstance(x, DTensor):
            x = x.redistribute(self.tp_mesh, [Replicate()]).to_local(grad_placements=[Partial()])
        else:
            x = _to_replicated_with_summed_grad(x, self.tp_mesh)
        return linear_group(x, [_LocalLinear(linear) for linear in linears])


class _LocalLinear:
    """A column-parallel Linear's local shards, seen as a Linear by linear_group."""

    def __init__(self, linear: nn.Linear) -> None:
        self.weight = linear.weight.to_local()
        self.bias = linear.bias.to_local() if linear.bias is not None else None


def _fuse_local_shards(module: nn.Module, tp_mesh: DeviceMesh) -> None:
    module.tp_mesh = tp_mesh
    cls = module.__class__
    module.__class__ = type(f"TensorParallel{cls.__name__}", (TensorParallelProjections, cls), {})


class TensorParallelExperts:
    """Mixin put in front of a GroupedExperts class: its weights hold this rank's slice of every expert's hidden
    dimension; tokens come in replicated and the partial outputs are all-reduced."""

    tp_mesh: DeviceMesh

    def forward(self, x_sorted: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.w1, DTensor):  # called by functional_call below with the local slices
            return super().forward(x_sorted, num_tokens_per_expert)
        mesh = self.tp_mesh
        x = _to_replicated_with_summed_grad(x_sorted, mesh)
        local = {name: getattr(self, name).to_local() for name in EXPERT_WEIGHTS}
        partial = functional_call(self, local, (x, num_tokens_per_expert))
        return (
            DTensor.from_local(partial, mesh, [Partial()], run_check=False).redistribute(mesh, [Replicate()]).to_local()
        )


def _shard_experts_hidden(experts: nn.Module, tp_mesh: DeviceMesh) -> None:
    hidden = experts.w1.shape[1]
    if hidden % tp_mesh.size() != 0:
        raise ValueError(
            f"model.moe expert width {hidden} is not divisible by parallel.tp={tp_mesh.size()}: "
            f"change model.moe.expert_hidden_dim or parallel.tp"
        )
    for name, dim in zip(EXPERT_WEIGHTS, (1, 1, 2)):  # gate and up split on hidden (dim 1), down on dim 2
        param = getattr(experts, name)
        setattr(
            experts,
            name,
            nn.Parameter(distribute_tensor(param.detach(), tp_mesh, [Shard(dim)]), requires_grad=param.requires_grad),
        )
    experts.tp_mesh = tp_mesh
    cls = experts.__class__
    experts.__class__ = type(f"TensorParallel{cls.__name__}", (TensorParallelExperts, cls), {})


def _attention_plan(block: nn.Module, sp: bool, stream) -> dict[str, object]:
    attention = block.attention
    local = not sp
    if getattr(attention, "wkv_b", None) is not None:  # multi-head latent attention
        plan: dict[str, object] = {
            "attention.wq" if attention.wq is not None else "attention.wq_b": ColwiseParallel(),
            "attention.wkv_b": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=stream, use_local_output=local),
        }
        if sp:  # the replicated down-projections take a plain tensor: gather the sequence and unwrap it
            plan["attention"] = PrepareModuleInput(
                input_layouts=(stream, None), desired_input_layouts=(Replicate(), None), use_local_output=True
            )
        return plan
    if attention.q_norm is not None and getattr(attention, "qk_norm_full", False):
        raise ValueError(
            "tensor parallel of full-width QK-norm (model.qk_norm_scope=full, OLMo 2) is not supported: "
            "it normalises over every head's features; use parallel.tp=1"
        )
    plan = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=stream, use_local_output=local),
    }
    if attention.q_norm is not None:
        # QK-norm runs on the local heads [B, T, heads/tp, head_dim]: its weight is replicated and its gradient
        # must be summed over the tp ranks, which SequenceParallel on the head dim does.
        plan["attention.q_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
        plan["attention.k_norm"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    if sp:
        # attention(x, rope, ...) needs x gathered along the sequence.
        plan["attention"] = PrepareModuleInput(input_layouts=(stream, None), desired_input_layouts=(Replicate(), None))
    return plan


def _ffn_plan(block: nn.Module, sp: bool, stream) -> dict[str, object]:
    local = not sp
    if block.moe is None:
        plan: dict[str, object] = {
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=stream, use_local_output=local),
        }
        if getattr(block.feed_forward, "w3", None) is not None:
            plan["feed_forward.w3"] = ColwiseParallel()
        if sp:
            plan["feed_forward"] = PrepareModuleInput(input_layouts=(stream,), desired_input_layouts=(Replicate(),))
        return plan
    plan = {}
    if block.moe.shared_experts is not None:  # summed into the replicated routed output: a plain tensor
        plan.update(
            {
                "moe.shared_experts.w1": ColwiseParallel(),
                "moe.shared_experts.w3": ColwiseParallel(),
                "moe.shared_experts.w2": RowwiseParallel(output_layouts=Replicate(), use_local_output=True),
            }
        )
    if sp:  # routing and dispatch run on the whole (gathered) sequence as plain tensors, then back to the stream
        plan["moe"] = PrepareModuleInputOutput(
            input_layouts=(stream,),
            desired_input_layouts=(Replicate(),),
            use_local_input=True,
            output_layouts=(Replicate(),),
            desired_output_layouts=(stream,),
            use_local_output=False,
        )
    return plan


def _block_plan(block: nn.Module, sp: bool, stream) -> dict[str, object]:
    if getattr(block.attention, "use_alibi", False):
        # Attention.alibi_slopes holds one slope per global head, but each rank computes n_heads/tp local heads.
        raise ValueError("tensor parallel does not support model.pos_embedding=alibi: use rope, or parallel.tp=1")
    # Without SP the stream is a plain (replicated) tensor, so plain norms work unchanged; with SP it is a
    # Shard(1) DTensor and the norms become SequenceParallel.
    plan = {**_attention_plan(block, sp, stream), **_ffn_plan(block, sp, stream)}
    if sp:
        norms = [
            name
            for name in ("attention_norm", "ffn_norm", "post_attention_norm", "post_ffn_norm")
            if hasattr(block, name)
        ]
        for name in norms:
            plan[name] = SequenceParallel()
    return plan
