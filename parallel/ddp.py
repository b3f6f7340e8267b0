"""Plain data parallel: every rank holds the whole model and gradients are averaged by all-reduce.

Used only when nothing is sharded (dp_shard = cp = tp = 1); any sharded layout replicates through FSDP2's HSDP
mesh instead, because torch's DistributedDataParallel does not accept DTensor parameters.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel


def apply_ddp(model: nn.Module, dp_mesh: DeviceMesh) -> DistributedDataParallel:
    """Wrap in torch DDP on the 1-D dp_replicate mesh. The wrapper adds a `module.` prefix that
    torch.distributed.checkpoint.state_dict (get_model_state_dict / DCP) strips, so checkpoints stay layout-free."""
    device_ids = None
    param = next(model.parameters())
    if param.device.type == "cuda":
        device_ids = [param.device.index]
    return DistributedDataParallel(model, process_group=dp_mesh.get_group(), device_ids=device_ids)
