"""Expert parallelism: each rank of the `ep` mesh holds E/ep of an MoE layer's routed experts, and tokens travel to
their expert's rank and back by all-to-all.

Only `GroupedExperts` changes: routing, sorting by expert and the weighted combine stay local in `MoE.forward`.
Its stacked weights w1/w3/w2 [E, ...] become DTensors sharded on dim 0 (Shard(0)) over the ep mesh, so
`state_dict()` / DCP still see the full [E, ...] tensors and checkpoints stay layout-free. Its forward becomes:

  1. all-to-all of the per-expert token counts, so every rank knows how many tokens it will receive;
  2. all-to-all of the tokens (torch.distributed.nn.functional.all_to_all_single, which carries autograd);
  3. regroup the received tokens from (source rank, expert) to (expert, source rank) order and run the model's own
     GroupedExperts computation on the local expert shards;
  4. undo the regrouping and all-to-all the results back to the tokens' ranks.

Gradients of the expert weights are the *sum* over the ep ranks' losses (the all-to-all backward brings every
rank's contribution to the expert's owner). The data-parallel wrapper must divide them by the data-parallel x cp
degree, as it averages every other gradient (torchtitan's FSDP gradient_divide_factor): `fully_shard_experts`
does that (parallel/fsdp.py calls it before fully_shard on the blocks).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.func import functional_call

from model.blocks.moe import EXPERT_WEIGHTS, MoE


def _regroup_index(counts: torch.Tensor) -> torch.Tensor:
    """counts [sources, experts] of received token segments laid out source-major; returns the gather index that
    lays them out expert-major (all of expert 0's tokens from every source, then expert 1's, ...)."""
    sources, experts = counts.shape
    starts = (torch.cumsum(counts.reshape(-1), 0) - counts.reshape(-1)).reshape(sources, experts)
    sizes = counts.t().reshape(-1)
    segment_starts = starts.t().reshape(-1)
    total = int(sizes.sum())
    offset_in_segment = torch.arange(total) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    return torch.repeat_interleave(segment_starts, sizes) + offset_in_segment


class ExpertParallel:
    """Mixin put in front of a GroupedExperts class (as FSDP2's fully_shard does) so its forward dispatches."""

    ep_mesh: DeviceMesh

    def forward(self, x_sorted: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.w1, DTensor):
            # Called by functional_call below with the local expert shards as plain tensors: the model's own math.
            return super().forward(x_sorted, num_tokens_per_expert)
        group = self.ep_mesh.get_group()
        ep = self.ep_mesh.size()
        counts = num_tokens_per_expert.to(torch.int64).reshape(ep, -1)  # [destination rank, its local experts]
        received_counts = torch.empty_like(counts)
        dist.all_to_all_single(received_counts, counts, group=group)  # [source rank, local experts]
        send_splits = counts.sum(1).tolist()
        recv_splits = received_counts.sum(1).tolist()

        received = dist_fn.all_to_all_single(
            x_sorted.new_empty(sum(recv_splits), x_sorted.shape[-1]),
            x_sorted.contiguous(),
            output_split_sizes=recv_splits,
            input_split_sizes=send_splits,
            group=group,
        )
        index = _regroup_index(received_counts).to(x_sorted.device)
        local_weights = {name: getattr(self, name).to_local() for name in EXPERT_WEIGHTS}
        local_out = functional_call(self, local_weights, (received.index_select(0, index), received_counts.sum(0)))
        back = local_out.index_select(0, torch.argsort(index))
        return dist_fn.all_to_all_single(
            x_sorted.new_empty(x_sorted.shape),
            back.contiguous(),
            output_split_sizes=send_splits,
            input_split_sizes=recv_splits,
            group=group,
        )


def _make_expert_parallel(experts: nn.Module, ep_mesh: DeviceMesh) -> None:
    num_experts = experts.w1.shape[0]
    if num_experts % ep_mesh.size() != 0:
        raise ValueError(
            f"model.moe.num_experts={num_experts} is not divisible by parallel.ep={ep_mesh.size()}: change one"
        )
    for name in EXPERT_WEIGHTS:
        param = getattr(experts, name)
        sharded = distribute_tensor(param.detach(), ep_mesh, [Shard(0)])
        setattr(experts, name, nn.Parameter(sharded, requires_grad=param.requires_grad))
    experts.ep_mesh = ep_mesh
    cls = experts.__class__
    experts.__class__ = type(f"ExpertParallel{cls.__name__}", (ExpertParallel, cls), {})


def apply_expert_parallel(model: nn.Module, ep_mesh: DeviceMesh) -> nn.Module:
    """Shard every MoE layer's routed experts over the 1-D ep mesh and dispatch tokens to them by all-to-all (in
    place). The layout (an MoE model, ep dividing the experts and the data-parallel ranks) was checked by
    ParallelDims.from_config. The multi-token-prediction modules' MoE layers (model.mtp) are sharded alike."""
    for moe in [m for m in model.modules() if isinstance(m, MoE)]:
        if not isinstance(moe.experts, ExpertParallel):
            _make_expert_parallel(moe.experts, ep_mesh)
    return model


def fully_shard_experts(model: nn.Module, dims, **fsdp_kwargs) -> None:
    """FSDP2 for the ep-sharded experts, to be called before `fully_shard` on the blocks.

    The experts are already split over the ep ranks, so FSDP may only shard them over the data-parallel ranks
    *outside* the ep group (dp_shard_mod_ep; FSDP's own mesh for the rest cannot overlap the ep mesh), and must
    divide their summed gradients by the whole dp_shard x cp degree like every other gradient. Experts that are
    already FSDP modules are left alone, so calling this twice is harmless."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    experts_mesh = dims.submesh("dp_shard_mod_ep")
    for module in model.modules():
        if isinstance(module, ExpertParallel) and not isinstance(module, FSDPModule):
            fully_shard(module, mesh=experts_mesh, **fsdp_kwargs)
            module.set_gradient_divide_factor(float(dims.dp_shard * dims.cp))


# ---------------------------------------------------------------------------------------------- balancing
def load_reducer(dims):
    """The sum of expert loads over the ranks that read different tokens (data parallel x context parallel), for
    `Transformer.update_expert_biases`; None when this process sees every token (one process, or TP/PP only)."""
    if dims is None or dims.mesh is None or dims.dp_degree * dims.cp == 1:
        return None
    group = dims.submesh("dp_cp").get_group()

    def reduce(loads: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(loads, group=group)
        return loads

    return reduce


def update_expert_biases(model_parts: list[nn.Module], dims=None) -> Optional[torch.Tensor]:
    """Auxiliary-loss-free balancing step, for the train modules to call once after every optimizer step (every
    rank, every layout): each MoE layer's selection bias moves against its experts' load over the global batch.

    `model_parts` are a train module's parts (the laid-out module, DDP, DeepSpeed's module, or a pipeline rank's
    stage modules). Returns the mean (max load / mean load) over this rank's MoE layers as a 0-dim tensor for
    logging (1 = balanced), or None without MoE layers. One all-reduce of [MoE layers, experts] counts per part."""
    reduce = load_reducer(dims)
    results = []
    for module in model_parts:
        module = getattr(module, "module", module)  # DDP / DeepSpeed wrap the Transformer as .module
        update = getattr(module, "update_expert_biases", None)
        if update is not None:
            value = update(reduce)
            if value is not None:
                results.append(value)
    return torch.stack(results).mean() if results else None
