"""The public face of `parallel` (re-exported lazily by parallel/__init__.py): lay a plain `model.build()` Transformer
out on a device mesh, so the model never knows how it is parallelised.

`parallelize` applies each technique in one fixed order, because each step wraps what the previous one produced:

  0. float8 Linear layers (parallel/float8.py)        - swaps the blocks' nn.Linear for torchao's Float8Linear
  1. tensor + sequence parallel (parallel/tensor.py)  - swaps Linear/Embedding weights for DTensors on the tp mesh
  2. expert parallel (parallel/expert.py)              - all-to-all dispatch of MoE experts on the ep mesh
  3. context parallel (parallel/context.py)            - swaps each block's inner attention for ring/Ulysses
  4. activation checkpointing (parallel/checkpointing.py) - wraps whole blocks, or per-op policies
  5. torch.compile (parallel/compile.py)              - compiles each (checkpointed) block, or the whole model
  6. data parallel: FSDP2/HSDP (parallel/fsdp.py) or DDP (parallel/ddp.py); ZeRO is DeepSpeed's engine instead
     (parallel/zero.py), built by the trainer because DeepSpeed also owns the optimizer.

With pipeline parallel (pp > 1) parallel/pipeline.py splits the model into stages first and calls
`parallelize_stage` on each; that file owns the pipeline schedule.

Typical use (the launcher's train modules):
    dims = ParallelDims.from_config(pcfg, world_size, model_cfg, seq_len)   # every layout rule, no torch
    dims.build_mesh("cuda" or "cpu")                                       # once; the dims keep it
    model = parallelize(model, dims)
    with loss_context(dims):
        loss = compute_loss(model, tokens, labels, dims)
        loss.backward()
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import nn

from parallel.dims import ParallelDims

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def parallelize(model: nn.Module, dims: ParallelDims):
    """Return the laid-out model (or, with pp > 1, parallel/pipeline.py's `Pipeline`: stages + schedule). `model`
    is a plain `model.build()` Transformer; the layout is `dims` (its config and mesh)."""
    if dims.needs_mesh and dims.mesh is None:
        raise ValueError(
            f"world size {dims.world_size} (FSDP: {dims.fsdp_enabled}) needs a DeviceMesh: call "
            f"dims.build_mesh(device_type) first"
        )
    if dims.pp > 1:
        from parallel.pipeline import pipeline_parallelize

        return pipeline_parallelize(model, dims, parallelize_stage)
    return parallelize_stage(model, dims)


def parallelize_stage(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Steps 0-6 of the module docstring on one module (the whole model, or one pipeline stage)."""
    cfg, model_cfg, mesh = dims.cfg, model.cfg, dims.mesh
    if cfg.float8 != "none":
        from parallel.float8 import apply_float8

        apply_float8(model, cfg, mesh=mesh)
    if dims.tp > 1:
        from parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(model, dims.submesh("tp"), cfg, model_cfg)
    if dims.ep > 1:
        from parallel.expert import apply_expert_parallel

        apply_expert_parallel(model, dims.submesh("ep"))
    if dims.cp > 1:
        from parallel.context import apply_context_parallel

        apply_context_parallel(model, dims.submesh("cp"), cfg)
    if cfg.ac_mode != "none":
        from parallel.checkpointing import apply_activation_checkpointing

        apply_activation_checkpointing(model, cfg)
    if cfg.compile:
        from parallel.compile import apply_compile

        apply_compile(model, cfg)
    if cfg.engine == "deepspeed":
        return model  # DeepSpeed's engine wraps it together with the optimizer (launcher/train_modules/zero.py)
    if dims.fsdp_enabled:
        from parallel.fsdp import apply_fsdp

        apply_fsdp(model, dims)
    elif dims.ddp_enabled:
        from parallel.ddp import apply_ddp

        model = apply_ddp(model, mesh["dp_replicate"])
    return model


def loss_outside_model(dims: ParallelDims) -> bool:
    """True when the loss must be computed from the logits outside the model (tensor parallel: DTensor logits)."""
    return dims.tp > 1


def loss_context(dims: ParallelDims):
    """Context for forward *and* backward: `loss_parallel()` when the logits are vocab-sharded DTensors."""
    if dims.tp > 1 and dims.cfg.loss_parallel:
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()
    return contextlib.nullcontext()


def compute_loss(model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, dims: ParallelDims) -> torch.Tensor:
    """The training loss of this rank's data-parallel slice (tokens, labels [B, T]); call inside `loss_context`.

    - Context parallel (cp > 1): the sequence is cut to this cp rank's chunks (zig-zag with cp_load_balance) and
      the model gets their global positions. The returned loss is weighted by this rank's share of the slice's
      non-ignored labels, so its mean over the cp ranks (what FSDP's gradient averaging over dp_shard x cp and a
      logged mean over ranks compute) is exactly the loss of the whole sequences.
    - Tensor parallel: the model returns vocab-sharded logits and the loss is computed here with
      model.loss.cross_entropy_loss (the model's own chunked loss cannot slice DTensor logits)."""
    forward_kwargs = {}
    if dims.cp > 1:
        from parallel.context import shard_for_context_parallel

        cp_mesh = dims.submesh("cp")
        tokens, labels, forward_kwargs["positions"] = shard_for_context_parallel(
            tokens, labels, None, cp_mesh, dims.cfg
        )
    if not loss_outside_model(dims):
        loss = model(tokens, labels, **forward_kwargs)
    else:
        from model.loss import cross_entropy_loss

        model_cfg = getattr(model, "module", model).cfg
        loss = cross_entropy_loss(
            model(tokens, **forward_kwargs),
            labels,
            z_loss_weight=model_cfg.z_loss_weight,
            chunk_size=model_cfg.loss_chunk_size,
        )
    if dims.cp > 1:
        loss = loss * _share_of_valid_labels(labels, cp_mesh)
    return loss


def _share_of_valid_labels(labels: torch.Tensor, cp_mesh: "DeviceMesh") -> torch.Tensor:
    """cp * (this rank's non-ignored labels) / (all cp ranks' non-ignored labels): 1 when every chunk counts the
    same tokens, and what turns the mean of per-rank mean losses into the token mean when they do not."""
    import torch.distributed as dist

    count = (labels != -100).sum().to(torch.float32)
    total = count.clone()
    dist.all_reduce(total, group=cp_mesh.get_group())
    return count * cp_mesh.size() / total.clamp(min=1)


def scalar_loss(loss: torch.Tensor) -> float:
    """A loss as a Python float, whether a plain tensor or a (replicated) DTensor from loss_parallel."""
    from torch.distributed.tensor import DTensor

    if isinstance(loss, DTensor):
        loss = loss.full_tensor()
    return float(loss.detach())


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, *, extra_group=None) -> torch.Tensor:
    """Clip gradients to a global norm `max_norm` across every layout; returns the total norm (before clipping).

    Written here because torch.nn.utils.clip_grad_norm_ stacks all gradient norms into one tensor, which fails
    when a model mixes plain and DTensor gradients or DTensors on different meshes (TP without SP, FSDP x TP).
    Norms are taken per mesh with torch.nn.utils.get_total_norm, DTensor norms made global with full_tensor(),
    then combined. `extra_group`: a process group whose ranks hold *different* parameters (pipeline stages),
    over which squared norms are summed."""
    grads = [p.grad for p in parameters if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    # Everything stays on the gradients' device: no host sync in the step, and NCCL can reduce `squared`.
    squared = _global_squared_norm(grads, device)
    if extra_group is not None:
        import torch.distributed as dist

        dist.all_reduce(squared, group=extra_group)
    total = squared.sqrt()
    # Multiplying by a clamped coefficient (1.0 when under the limit, exact in floating point) instead of
    # branching on its value keeps the step free of a device-to-host read, as torch's own clip does.
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total


def _global_squared_norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The squared 2-norm of all `tensors` together as a float64 0-dim tensor on `device`, global over the ranks
    that share each DTensor (one norm per mesh, made whole with full_tensor(): a collective on that mesh)."""
    from torch.distributed.tensor import DTensor

    by_mesh: dict = {}
    for t in tensors:
        by_mesh.setdefault(id(t.device_mesh) if isinstance(t, DTensor) else None, []).append(t)
    squared = torch.zeros((), dtype=torch.float64, device=device)
    for group in by_mesh.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type=2.0, foreach=False)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squared = squared + norm.detach().to(device=device, dtype=torch.float64) ** 2
    return squared


@torch.no_grad()
def grouped_squared_norms(groups: list[list[torch.Tensor]], device: torch.device, *, extra_group=None) -> torch.Tensor:
    """[len(groups)] float64: the squared global 2-norm of each group of tensors (e.g. the gradients of one
    transformer block), the same number on every layout, as clip_grad_norm_'s total is. A group may be empty (a
    pipeline stage holds some blocks only): `extra_group`, the process group whose ranks hold different groups,
    sums the squares over it. Every rank must pass the same groups in the same order (collectives per mesh)."""
    squared = torch.stack([_global_squared_norm(group, device) for group in groups])
    if extra_group is not None:
        import torch.distributed as dist

        dist.all_reduce(squared, group=extra_group)
    return squared
