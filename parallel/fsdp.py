"""FSDP2 (`fully_shard`): full shard, hybrid shard (HSDP on a 2-D replicate x shard mesh), optional bf16 params
with fp32 gradient reduction and CPU offload.

Each transformer block is its own FSDP unit so only one block's full weights are live at a time; the root unit
holds the embeddings, final norm and output (and keeps tied embedding/output weights in one unit, which FSDP2
requires). With context parallel the shard dimension is dp_shard x cp, as the cp ranks see different tokens and
need their gradients reduced like data-parallel ones. With expert parallel the routed experts (already split over
the ep ranks) get their own FSDP units over the data-parallel ranks outside the ep group (parallel/expert.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

from model.dtypes import torch_dtype
from parallel.dims import ParallelDims


def fsdp_mesh(dims: ParallelDims) -> DeviceMesh:
    """1-D shard mesh, or 2-D (dp_replicate, dp_shard_cp) for HSDP."""
    if dims.dp_replicate > 1:
        # Slicing a flattened dim together with a real one from the root mesh is what torchtitan does for HSDP x CP.
        return dims.mesh["dp_replicate", "dp_shard" if dims.cp == 1 and dims.ep == 1 else "dp_shard_cp"]
    return dims.submesh("dp_shard_cp")


def apply_fsdp(model: nn.Module, dims: ParallelDims) -> nn.Module:
    cfg = dims.cfg
    if cfg.fsdp_cpu_offload and not torch.accelerator.is_available():
        raise ValueError(
            "parallel.fsdp_cpu_offload=true moves sharded params/grads/optimizer state from the accelerator to "
            "CPU, but this run has no accelerator (the model already lives on CPU): set it to false"
        )
    policies = {
        "mp_policy": MixedPrecisionPolicy(
            param_dtype=torch_dtype(cfg.fsdp_param_dtype), reduce_dtype=torch_dtype(cfg.fsdp_reduce_dtype)
        ),
    }
    if cfg.fsdp_cpu_offload:
        policies["offload_policy"] = CPUOffloadPolicy()
    kwargs = {"mesh": fsdp_mesh(dims), **policies}
    if dims.ep > 1:
        # The experts are already DTensors on the ep mesh, which overlaps dp_shard_cp: FSDP must shard them over
        # the remaining data-parallel ranks first, so the blocks' fully_shard below leaves them alone.
        from parallel.expert import ExpertParallel, fully_shard_experts

        fully_shard_experts(model, dims, reshard_after_forward=cfg.reshard_after_forward, **policies)
        if dims.submesh("dp_shard_mod_ep").size() > 1:
            # The experts' gradient divide factor (dp_shard * cp) is not their FSDP mesh size, for which FSDP picks
            # a PREMUL_SUM reduce-scatter, which gloo lacks: sum, then divide. (Not on a 1-rank mesh, where FSDP
            # skips the reduce-scatter and, with forced sums, divides twice: torch 2.13.)
            for module in model.modules():
                if isinstance(module, ExpertParallel):
                    module.set_force_sum_reduction_for_comms(True)
    layers = getattr(model, "layers", None)
    if layers is not None:
        blocks = list(layers.values())
        for index, block in enumerate(blocks):
            # The last block's weights are needed again first in backward: keeping them avoids one all-gather.
            reshard = cfg.reshard_after_forward and index < len(blocks) - 1
            fully_shard(block, reshard_after_forward=reshard, **kwargs)
    fully_shard(model, reshard_after_forward=cfg.reshard_after_forward, **kwargs)
    return model
