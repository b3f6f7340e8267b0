"""Ring attention for context parallelism on any backend (gloo on CPU included).

Why our own: PyTorch's experimental `context_parallel` API dispatches to the CUDA flash/efficient SDPA kernels and
their log-sum-exp outputs; on CPU/gloo there is no such path. Here every cp rank keeps its queries, the K/V chunks
travel around the ring (one send/recv per step, started before the block's compute so it can overlap with it), and
the partial attention of each block is merged exactly with its log-sum-exp.

Memory stays that of one K/V block, not of the whole sequence: the forward keeps only the local q, k, v, the
merged output and its log-sum-exp for backward (autograd never sees the visited blocks), and the backward passes
the K/V blocks round the ring a second time. Each block's dK/dV accumulator travels with it: every rank adds the
gradient of its queries' attention to that block (the flash-attention backward with the saved global
log-sum-exp), and after cp steps the accumulator arrives back at the block's owner. dQ stays local. This is the
backward of ring-flash-attention; an all-gather of K/V (or autograd through the ring) would keep all cp blocks.

Positions are global: with the zig-zag layout of `context.shard_for_context_parallel` rank r holds chunks r and
2*cp-1-r, so causal work is even across ranks and blocks that are entirely in the future are skipped (the ring
still turns: every rank takes part in every shift).
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


class _Shift:
    """An asynchronous step round the ring: send `x` to the next rank, receive the previous rank's into a new
    buffer. `wait()` returns that buffer; until then `x` must stay alive (it is being sent)."""

    def __init__(self, x: torch.Tensor, group: dist.ProcessGroup) -> None:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        self.sent = x.contiguous()
        self.received = torch.empty_like(self.sent)
        ops = [
            dist.P2POp(dist.isend, self.sent, dist.get_global_rank(group, (rank + 1) % size), group),
            dist.P2POp(dist.irecv, self.received, dist.get_global_rank(group, (rank - 1) % size), group),
        ]
        self.works = dist.batch_isend_irecv(ops)

    def wait(self) -> torch.Tensor:
        for work in self.works:
            work.wait()
        return self.received


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


class _Ring:
    """What forward and backward share: the group, this rank's query positions and the block masks."""

    def __init__(
        self,
        group,
        local_len: int,
        load_balance: bool,
        causal: bool,
        sliding_window: Optional[int],
        softcap: Optional[float],
        scale: float,
        repeats: int,
    ) -> None:
        self.group, self.cp, self.rank = group, dist.get_world_size(group), dist.get_rank(group)
        self.local_len, self.load_balance = local_len, load_balance
        self.causal, self.sliding_window, self.softcap, self.scale = causal, sliding_window, softcap, scale
        self.repeats = repeats
        # Masks are built on the CPU, so deciding to skip a block never waits on the accelerator.
        self.q_pos = chunk_positions(self.rank, self.cp, local_len, load_balance)

    def mask(self, step: int, device: torch.device) -> tuple[bool, Optional[torch.Tensor]]:
        """(whether the block visited at `step` has any allowed key, its mask on `device` or None)."""
        source = (self.rank - step) % self.cp
        k_pos = chunk_positions(source, self.cp, self.local_len, self.load_balance)
        allowed = _allowed(self.q_pos, k_pos, self.causal, self.sliding_window)
        if allowed is None:
            return True, None
        if not bool(allowed.any()):
            return False, None
        return True, allowed.to(device, non_blocking=True)

    def expand(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of a travelling [2, B, H_kv, T, D] block as float32 [B, H, T, D] (GQA heads repeated)."""
        return tuple(t.float().repeat_interleave(self.repeats, dim=1) for t in (kv[0], kv[1]))

    def scores(self, q: torch.Tensor, k: torch.Tensor, allowed: Optional[torch.Tensor]):
        """(masked scores, tanh of the soft-capped raw scores or None): the latter is what the backward needs."""
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        capped = None
        if self.softcap is not None:
            capped = torch.tanh(scores / self.softcap)
            scores = self.softcap * capped
        if allowed is not None:
            # A finite minimum, not -inf: a row with no allowed key in this block then gets merge weight exactly
            # zero (forward) and probability zero (backward) without producing NaN.
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return scores, capped

    def reduce_heads(self, grad: torch.Tensor) -> torch.Tensor:
        """[B, H, T, D] gradient of repeated K/V heads -> [B, H_kv, T, D] (sum over each KV head's query heads)."""
        if self.repeats == 1:
            return grad
        b, h, t, d = grad.shape
        return grad.view(b, h // self.repeats, self.repeats, t, d).sum(dim=2)


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ring: _Ring):
        qf = q.float()
        out = lse = None
        kv = torch.stack([k, v])
        for step in range(ring.cp):
            shift = _Shift(kv, ring.group) if step < ring.cp - 1 else None  # overlaps this block's compute
            visible, allowed = ring.mask(step, q.device)
            if visible:
                block_k, block_v = ring.expand(kv)
                scores, _ = ring.scores(qf, block_k, allowed)
                block_lse = torch.logsumexp(scores, dim=-1, keepdim=True)
                block_out = torch.matmul(torch.exp(scores - block_lse), block_v)
                if out is None:
                    out, lse = block_out, block_lse
                else:
                    new_lse = torch.logaddexp(lse, block_lse)
                    out = out * torch.exp(lse - new_lse) + block_out * torch.exp(block_lse - new_lse)
                    lse = new_lse
            if shift is not None:
                kv = shift.wait()  # now the chunk of rank (rank - step - 1) % cp
        ctx.ring = ring
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        ring: _Ring = ctx.ring
        q, k, v, out, lse = ctx.saved_tensors
        qf, dout = q.float(), grad_out.float()
        delta = (dout * out).sum(dim=-1, keepdim=True)  # rowsum(dO * O), the softmax backward's correction
        dq = torch.zeros_like(qf)
        kv = torch.stack([k, v])
        dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)  # the travelling block's dK/dV
        dkv_shift = None
        for step in range(ring.cp):
            kv_shift = _Shift(kv, ring.group) if step < ring.cp - 1 else None
            if dkv_shift is not None:
                dkv = dkv_shift.wait()  # the accumulator of the block now held, from the rank before
            visible, allowed = ring.mask(step, q.device)
            if visible:
                block_k, block_v = ring.expand(kv)
                scores, capped = ring.scores(qf, block_k, allowed)
                probs = torch.exp(scores - lse)  # the global softmax restricted to this block
                dscores = probs * (torch.matmul(dout, block_v.transpose(-2, -1)) - delta)
                if capped is not None:
                    dscores = dscores * (1 - capped * capped)
                dscores = dscores * ring.scale
                dq += torch.matmul(dscores, block_k)
                dkv = dkv + torch.stack(
                    [
                        ring.reduce_heads(torch.matmul(dscores.transpose(-2, -1), qf)),
                        ring.reduce_heads(torch.matmul(probs.transpose(-2, -1), dout)),
                    ]
                )
            dkv_shift = _Shift(dkv, ring.group)  # on to the next rank, which holds this block from the next step
            if kv_shift is not None:
                kv = kv_shift.wait()
        dkv = dkv_shift.wait()  # after cp shifts each accumulator is back with its block's owner
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None


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
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads {q.shape[1]} are not a multiple of key/value heads {k.shape[1]}")
    ring = _Ring(
        group,
        q.shape[-2],
        load_balance,
        causal,
        sliding_window,
        softcap,
        scale if scale is not None else q.shape[-1] ** -0.5,
        q.shape[1] // k.shape[1],
    )
    return _RingAttention.apply(q, k, v, ring)
