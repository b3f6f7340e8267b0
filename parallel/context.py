"""Context parallelism: split the sequence over the `cp` mesh dimension.

Two pieces, used together by the trainer:
- `shard_for_context_parallel` gives each cp rank its slice of the token/label/position tensors. With a causal
  mask the later tokens attend to more keys, so with `cp_load_balance` the sequence is cut into 2*cp chunks and
  rank r takes chunks r and 2*cp-1-r (zig-zag), which evens out the attention work. The global positions go to
  RoPE / learned position embeddings. `gather_from_context_parallel` is its inverse for per-token outputs (the
  downstream evaluation's token scores and greedy tokens): every rank's slice gathered and put back in sequence
  order.
- `apply_context_parallel` swaps every block's `attention.inner_attention` for a `ContextParallelAttention` that
  runs ring attention (parallel/ring_attention.py) or DeepSpeed-Ulysses (parallel/ulysses.py) over the cp group.
  Everything else in the model is token-wise and needs no change.

Each cp rank computes the loss over its own tokens, so the loss and the gradients of the (replicated) parameters
are averaged over cp exactly like over data parallel: the cp dimension is folded into the data-parallel gradient
reduction (torchtitan's dp_shard_cp), which is the caller's job (parallelize / FSDP mesh), not this module's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from parallel.config import ParallelConfig
from parallel.ring_attention import chunk_positions, ring_attention
from parallel.ulysses import heads_to_sequence, sequence_to_heads


def _check_cp_mesh(cp_mesh: DeviceMesh) -> None:
    if cp_mesh.ndim != 1:
        raise ValueError(f"context parallel needs a 1-D cp mesh, got {cp_mesh.ndim} dims ({cp_mesh.mesh_dim_names})")


def shard_for_context_parallel(
    tokens: torch.Tensor,
    labels: Optional[torch.Tensor],
    positions: Optional[torch.Tensor],
    cp_mesh: DeviceMesh,
    cfg: ParallelConfig,
) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """This cp rank's slice of tokens [B, T] and labels [B, T], and the global positions ([T/cp] or [B, T/cp])."""
    _check_cp_mesh(cp_mesh)
    cp = cp_mesh.size()
    seq_len = tokens.shape[1]
    pieces = 2 * cp if cfg.cp_load_balance else cp
    if seq_len % pieces != 0:
        raise ValueError(
            f"sequence length {seq_len} is not divisible by {pieces} (= {'2*' if cfg.cp_load_balance else ''}"
            f"parallel.cp={cp}{' with parallel.cp_load_balance=true' if cfg.cp_load_balance else ''}): "
            f"change the sequence length or parallel.cp"
        )
    index = chunk_positions(cp_mesh.get_local_rank(), cp, seq_len // cp, cfg.cp_load_balance, device=tokens.device)
    local_tokens = tokens.index_select(1, index)
    local_labels = labels.index_select(1, index) if labels is not None else None
    if positions is None:
        local_positions = index
    elif positions.dim() == 1:
        local_positions = positions.index_select(0, index)
    else:
        local_positions = positions.index_select(1, index)
    return local_tokens, local_labels, local_positions


def restore_sequence_order(pieces: list[torch.Tensor], load_balance: bool) -> torch.Tensor:
    """The whole sequence [B, T, ...] from the slices [B, T/cp, ...] cp ranks 0..cp-1 hold (as
    `shard_for_context_parallel` cut them), in sequence order."""
    cp, local_len = len(pieces), pieces[0].shape[1]
    first = pieces[0]
    whole = first.new_empty((first.shape[0], cp * local_len, *first.shape[2:]))
    for rank, piece in enumerate(pieces):
        whole[:, chunk_positions(rank, cp, local_len, load_balance, device=first.device)] = piece
    return whole


@torch.no_grad()
def gather_from_context_parallel(local: torch.Tensor, cp_mesh: DeviceMesh, cfg: ParallelConfig) -> torch.Tensor:
    """This cp rank's per-token values [B, T/cp, ...] (of the tokens `shard_for_context_parallel` gave it) with
    every other cp rank's, as the whole sequence [B, T, ...] in order, on every cp rank. No gradients."""
    import torch.distributed as dist

    _check_cp_mesh(cp_mesh)
    local = local.contiguous()
    pieces = [torch.empty_like(local) for _ in range(cp_mesh.size())]
    dist.all_gather(pieces, local, group=cp_mesh.get_group())
    return restore_sequence_order(pieces, cfg.cp_load_balance)


class ContextParallelAttention(nn.Module):
    """Drop-in for the model's inner attention when q/k/v [B, H, T/cp, D] hold this rank's share of the sequence.

    Ulysses runs the original module (kept as `inner`, which has no parameters, so state-dict names do not change)
    on head-sharded full sequences; ring attention computes the attention itself, block by block.
    """

    def __init__(self, inner: nn.Module, cp_mesh: DeviceMesh, method: str, load_balance: bool) -> None:
        super().__init__()
        self.inner = inner
        self.cp_mesh = cp_mesh
        self.method = method
        self.load_balance = load_balance

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        q_start: int = 0,
        key_padding_mask: Optional[torch.Tensor] = None,
        sliding_window: Optional[int] = None,
        softcap: Optional[float] = None,
        attn_bias: Optional[torch.Tensor] = None,
        scale: Optional[float] = None,
    ) -> torch.Tensor:
        if q_start != 0 or k.shape[2] != q.shape[2]:
            raise ValueError("context parallel attention is for training/prefill without a KV cache")
        if key_padding_mask is not None:
            raise ValueError("context parallel attention does not support attention_mask (padding); pack sequences")
        if attn_bias is not None:
            raise ValueError("context parallel attention does not support an additive bias (ALiBi)")
        group = self.cp_mesh.get_group()
        if self.method == "ring":
            # The ring carries keys and values stacked: latent attention's values (of another width than its
            # queries and keys) travel zero-padded to a common width; zero query/key columns leave the scores as
            # they are, zero value columns give zero outputs, cut off again.
            v_width, width = v.shape[-1], max(v.shape[-1], k.shape[-1])
            if v_width != k.shape[-1]:
                scale = scale if scale is not None else q.shape[-1] ** -0.5
                q, k, v = (torch.nn.functional.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
            return ring_attention(
                q,
                k,
                v,
                group,
                load_balance=self.load_balance,
                causal=True,
                sliding_window=sliding_window,
                softcap=softcap,
                scale=scale,
            )[..., :v_width]
        cp = self.cp_mesh.size()
        if k.shape[1] % cp != 0:  # too few KV heads to split: share them out per query head instead
            n_rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        q, k, v = (sequence_to_heads(t, group, self.load_balance) for t in (q, k, v))
        out = self.inner(q, k, v, sliding_window=sliding_window, softcap=softcap, scale=scale)
        return heads_to_sequence(out, group, self.load_balance)


def apply_context_parallel(model: nn.Module, cp_mesh: DeviceMesh, cfg: ParallelConfig) -> nn.Module:
    """Swap each block's `attention.inner_attention` for ring or Ulysses attention over the 1-D cp mesh (in place).
    What context parallel cannot carry (ALiBi, Ulysses with heads not divisible by cp) was refused by
    ParallelDims.from_config."""
    _check_cp_mesh(cp_mesh)
    for block in model.layers.values():
        attention = block.attention
        if not isinstance(attention.inner_attention, ContextParallelAttention):
            attention.inner_attention = ContextParallelAttention(
                attention.inner_attention, cp_mesh, cfg.cp_method, cfg.cp_load_balance
            )
    return model
