"""Ring attention for context parallelism on any backend (gloo on CPU included).

Why our own: PyTorch's experimental `context_parallel` API dispatches to the CUDA flash/efficient SDPA kernels and
their log-sum-exp outputs; on CPU/gloo there is no such path. Here every cp rank keeps its queries, the K/V chunks
travel around the ring (one send/recv per step, overlappable with the block's compute on a real fabric), and the
partial attention of each block is merged exactly with its log-sum-exp. The backward is plain autograd through the
block math and through `_RingShift`, whose backward sends the gradient the opposite way round the ring, so the
gradients are exact by construction (the price: autograd keeps each visited K/V block, as an all-gather would).

Positions are global: with the zig-zag layout of `context.shard_for_context_parallel` rank r holds chunks r and
2*cp-1-r, so causal work is even across ranks and blocks that are entirely in the future are skipped.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def chunk_positions(rank: int, cp: int, local_len: int, load_balance: bool, device=None) -> torch.Tensor:
    """Global sequence positions of the tokens that cp rank `rank` holds (zig-zag when `load_balance`)."""
    if not load_balance:
        return torch.arange(rank * local_len, (rank + 1) * local_len, device=device)
    if local_len % 2 != 0:
        raise ValueError(f"zig-zag context parallel needs an even local sequence length, got {local_len}")
    half = local_len // 2
    first = torch.arange(rank * half, (rank + 1) * half, device=device)
    mirror = 2 * cp - 1 - rank
    second = torch.arange(mirror * half, (mirror + 1) * half, device=device)
    return torch.cat([first, second])


def _send_recv(x: torch.Tensor, group: dist.ProcessGroup, shift: int) -> torch.Tensor:
    """Send `x` to the rank `shift` places ahead in the group and receive the one from `shift` places behind."""
    size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    dst = dist.get_global_rank(group, (rank + shift) % size)
    src = dist.get_global_rank(group, (rank - shift) % size)
    x = x.contiguous()
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, dst, group), dist.P2POp(dist.irecv, received, src, group)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    return received


class _RingShift(torch.autograd.Function):
    """One step around the ring; the gradient goes back one step the other way.

    torch.distributed.nn.functional has autograd-aware collectives but no point-to-point ones, hence this Function.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _send_recv(x, group, shift=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _send_recv(grad, ctx.group, shift=-1), None


def ring_shift(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _RingShift.apply(x, group)


def _allowed(
    q_pos: torch.Tensor, k_pos: torch.Tensor, causal: bool, sliding_window: Optional[int]
) -> Optional[torch.Tensor]:
    """[Tq, Tk] boolean mask of the keys each query may attend to, or None when everything is allowed."""
    if not causal and sliding_window is None:
        return None
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        allowed &= diff >= 0
    if sliding_window is not None:
        allowed &= diff < sliding_window
    return allowed


def _block_attention(q, k, v, allowed, scale: float, softcap: Optional[float]):
    """Attention of q over one K/V block: (output [B,H,Tq,D], log-sum-exp [B,H,Tq,1]), float32.

    Fully masked rows get a finite log-sum-exp near the float minimum, so their merge weight is exactly zero and no
    NaN appears in forward or backward.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    out = torch.matmul(torch.exp(scores - lse), v)
    return out, lse


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: dist.ProcessGroup,
    *,
    load_balance: bool,
    causal: bool = True,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Exact attention of the local queries over the whole (cp-sharded) sequence.

    q: [B, H, T_local, D]; k, v: [B, H_kv, T_local, D] (GQA: H a multiple of H_kv). Returns [B, H, T_local, D].
    """
    cp = dist.get_world_size(group)
    rank = dist.get_rank(group)
    local_len = q.shape[-2]
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    repeats = q.shape[1] // k.shape[1]  # GQA: the ring carries the H_kv heads, each block repeats them
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    out_dtype = q.dtype
    qf = q.float()
    # Masks are built on the CPU, so deciding to skip a block never waits on the accelerator.
    q_pos = chunk_positions(rank, cp, local_len, load_balance)

    out = lse = None
    skipped_last = False
    kv = torch.stack([k, v])
    for step in range(cp):
        if step > 0:
            kv = ring_shift(kv, group)  # now holds the chunk of rank (rank - step) % cp
        source = (rank - step) % cp
        allowed = _allowed(q_pos, chunk_positions(source, cp, local_len, load_balance), causal, sliding_window)
        if allowed is not None and not bool(allowed.any()):
            skipped_last = True
            continue  # a block entirely in the future (or out of the window): nothing to add
        skipped_last = False
        if allowed is not None:
            allowed = allowed.to(q.device, non_blocking=True)
        block_k, block_v = (t.float().repeat_interleave(repeats, dim=1) for t in (kv[0], kv[1]))
        block_out, block_lse = _block_attention(qf, block_k, block_v, allowed, scale, softcap)
        if out is None:
            out, lse = block_out, block_lse
        else:
            new_lse = torch.logaddexp(lse, block_lse)
            out = out * torch.exp(lse - new_lse) + block_out * torch.exp(block_lse - new_lse)
            lse = new_lse
    if skipped_last:
        # Every rank must run the backward of every shift (its peers wait for it); a trailing skipped block would
        # leave the last shifts out of the autograd graph, so tie the final K/V to the output with weight zero.
        out = out + 0.0 * kv.float().sum()
    return out.to(out_dtype)
