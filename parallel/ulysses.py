"""DeepSpeed-Ulysses context parallelism: trade the sequence shard for a head shard around attention.

Before attention an all-to-all turns q/k/v from [B, H, T/cp, D] (all heads, a slice of the sequence) into
[B, H/cp, T, D] (a slice of the heads, the whole sequence), so the model's own attention module runs unchanged on
full sequences (causal masks, sliding windows, soft-capping, ALiBi all keep working); a second all-to-all after it
goes back. The all-to-all is torch.distributed.nn.functional.all_to_all_single, which carries autograd.

The cp ranks hold zig-zag chunks (see context.shard_for_context_parallel), so the gathered sequence is put back in
natural order before attention and into chunk order after it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from parallel.ring_attention import chunk_positions


def _gathered_order(cp: int, local_len: int, load_balance: bool, device) -> torch.Tensor:
    """Global position of each row of the rank-ordered gathered sequence."""
    return torch.cat([chunk_positions(r, cp, local_len, load_balance, device=device) for r in range(cp)])


def sequence_to_heads(x: torch.Tensor, group: dist.ProcessGroup, load_balance: bool) -> torch.Tensor:
    """[B, H, T/cp, D] sequence-sharded -> [B, H/cp, T, D] head-sharded, sequence in natural order."""
    cp = dist.get_world_size(group)
    batch, heads, local_len, head_dim = x.shape
    if heads % cp != 0:
        raise ValueError(f"Ulysses needs the head count ({heads}) divisible by cp={cp}")
    # [cp (destination), B, H/cp, T/cp, D]: head group j goes to rank j.
    send = x.reshape(batch, cp, heads // cp, local_len, head_dim).transpose(0, 1).contiguous()
    received = dist_fn.all_to_all_single(torch.empty_like(send), send, group=group)
    # received[j] is rank j's sequence chunk of our head group.
    gathered = received.permute(1, 2, 0, 3, 4).reshape(batch, heads // cp, cp * local_len, head_dim)
    order = _gathered_order(cp, local_len, load_balance, x.device)
    return gathered.index_select(2, torch.argsort(order))


def heads_to_sequence(x: torch.Tensor, group: dist.ProcessGroup, load_balance: bool) -> torch.Tensor:
    """Inverse of sequence_to_heads: [B, H/cp, T, D] natural order -> [B, H, T/cp, D] of this rank's chunks."""
    cp = dist.get_world_size(group)
    batch, local_heads, seq_len, head_dim = x.shape
    local_len = seq_len // cp
    order = _gathered_order(cp, local_len, load_balance, x.device)
    in_rank_order = x.index_select(2, order)
    # [cp (destination rank = sequence chunk owner), B, H/cp, T/cp, D]
    send = in_rank_order.reshape(batch, local_heads, cp, local_len, head_dim).permute(2, 0, 1, 3, 4).contiguous()
    received = dist_fn.all_to_all_single(torch.empty_like(send), send, group=group)
    # received[j] is head group j of our chunk.
    return received.transpose(0, 1).reshape(batch, cp * local_heads, local_len, head_dim)
