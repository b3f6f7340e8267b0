"""What one rank of a large job holds, counted from the real laid-out model on one machine.

A layout can pass every rule (parallel/dims.py) and still not fit the GPUs' memory; the estimate
(parallel/estimate.py) sizes it from formulas. This file measures instead: under a fake process group of the full
world size (torch's `fake` backend: every collective returns at once, nothing is sent) the model is built on the
meta device (no memory) and laid out by `parallel.parallelize` exactly as that rank would lay it out, so its
DTensor local shards - FSDP's padding, tensor-parallel splits, experts per ep rank, the pipeline stage's layers -
are the ones training would allocate. Their bytes are what this rank keeps between steps: weights, gradients and
the optimizer state. torchtitan's COMM_MODE=fake_backend and Megatron's --fake-process-group do the same.

One process group per process: a caller that inspects several ranks runs one process per rank
(launcher/dry_run.py).

DeepSpeed's engine cannot be built on a fake process group on the meta device (it allocates its flat buffers on the
accelerator); its ZeRO partitions are sized from the built model's parameter count instead (`zero_state_bytes`):
DeepSpeed cuts one flat buffer of every parameter into dp_shard equal partitions (the last padded).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

FP32_BYTES = 4


@dataclass(frozen=True)
class StateBytes:
    """Bytes of training state one rank keeps between steps (no activations, no gathered layers)."""

    parameters: int  # elements of this rank's parameter shards
    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def init_fake_process_group(rank: int, world_size: int) -> None:
    """This process plays `rank` of a `world_size` job: collectives are accepted and do nothing."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size} ranks")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


def stage_first_ranks(pp: int, world_size: int) -> list[int]:
    """Rank 0 of each pipeline-parallel rank's group: "pp" is the outermost dimension of the layout's mesh
    (ParallelDims.build_mesh), so pp rank s starts at s * world_size / pp. Within a stage rank 0 holds the most:
    FSDP pads the last shards, never the first."""
    if pp < 1 or world_size % pp:
        raise ValueError(f"pp={pp} must divide the world size {world_size}")
    return [s * (world_size // pp) for s in range(pp)]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _bytes(tensor: torch.Tensor) -> int:
    local = _local(tensor)
    return local.numel() * local.element_size()


def _unique_parameters(parts: Iterable[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for part in parts:
        for param in part.parameters():
            seen.setdefault(id(param), param)
    return list(seen.values())


def local_shards(parts: Iterable[nn.Module]) -> nn.ParameterList:
    """Plain parameters shaped and typed like this rank's local shards of the parameters of `parts` (tied ones
    once), on the meta device, each trainable one with the gradient backward leaves (FSDP2's sharded gradient has
    the shard's shape and dtype); frozen ones (LoRA's base) hold weights only, no gradient and no optimizer state.

    The optimizer is stepped on these rather than on the DTensors: AdamW keeps per-element state shaped like its
    parameter's local shard either way, and a step over hundreds of meta DTensors spends about a minute in DTensor
    dispatch (deepseek_v3, torch 2.13) for the same shapes."""
    shards = nn.ParameterList()
    for param in _unique_parameters(parts):
        local = torch.empty_like(_local(param), device="meta")
        shard = nn.Parameter(local, requires_grad=param.requires_grad)
        if param.requires_grad:
            shard.grad = torch.empty_like(local)
        shards.append(shard)
    return shards


def measured_state_bytes(shards: nn.ParameterList, optimizers: list[torch.optim.Optimizer]) -> StateBytes:
    """Bytes of `shards` (local_shards), their gradients and the `optimizers`' state over them, read after one
    step (which is when AdamW creates its moments)."""
    params = list(shards)
    optimizer_bytes = sum(
        _bytes(value)
        for optimizer in optimizers
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )
    return StateBytes(
        parameters=sum(p.numel() for p in params),
        weights=sum(_bytes(p) for p in params),
        gradients=sum(_bytes(p.grad) for p in params if p.grad is not None),
        optimizer=optimizer_bytes,
    )


def zero_state_bytes(total_parameters: int, dp: int, zero_stage: int, weight_bytes: int) -> StateBytes:
    """DeepSpeed ZeRO-`zero_stage` over `dp` ranks of a model of `total_parameters`: weights and gradients in
    `weight_bytes` (trainer.precision), an fp32 master copy beside AdamW's two fp32 moments unless the weights are
    fp32; ZeRO-1 partitions the optimizer state, ZeRO-2 also the gradients, ZeRO-3 also the weights."""
    if zero_stage not in (1, 2, 3):
        raise ValueError(f"zero_stage={zero_stage} must be 1, 2 or 3")
    partition = math.ceil(total_parameters / dp)
    master = FP32_BYTES if weight_bytes != FP32_BYTES else 0
    held_weights = partition if zero_stage >= 3 else total_parameters
    return StateBytes(
        parameters=held_weights,
        weights=held_weights * weight_bytes,
        gradients=(partition if zero_stage >= 2 else total_parameters) * weight_bytes,
        optimizer=partition * (master + 2 * FP32_BYTES),
    )
