"""Multi-head attention with any number of KV heads (MHA / GQA / MQA).

The softmax(QK^T)V step lives in its own submodule, `inner_attention`, so context parallelism can swap it for
ring or Ulysses attention without touching the projections. It takes the fast path (SDPA with `is_causal=True` and
no mask, so flash kernels run on GPU, with `enable_gqa` so grouped KV heads are read in place, not repeated)
whenever nothing needs an explicit mask. Sliding windows and document masks of a training forward come built once
for all layers (model/blocks/attention_masks.py: a boolean mask for SDPA, or a FlexAttention block mask); ALiBi,
padding and cache decoding build theirs here. A logit softcap needs the scores themselves, which SDPA never
exposes, so that case is computed explicitly (or by FlexAttention's score_mod).

`ScaledDotProductAttention.measure_max_logit` (set by the launcher at log steps with trainer.layer_health) keeps
the largest pre-softmax logit q.k * scale over the causal pairs of the forwards since it was last read, computed
explicitly in query chunks beside the kernel (which never exposes it); nothing is computed while it is off.

Masked SDPA still repeats K/V: CUDA's memory-efficient kernel (the one that takes a mask) refuses grouped heads in
older torch sources (current main accepts them; 2.11 was not checked), and a refusal means the math kernel, which
materialises the scores.

QK-clip (launcher/qk_clip.py) needs each head's largest pre-softmax logit q.k * scale of a training step, which
the fused kernels never expose. With `record_max_logit` set, a training forward also computes the scores once more
without gradient, masked as the softmax sees them (causal, the layer's window, padding; a document mask is not
applied, so the figure is an upper bound there), and keeps the running max per query head in `max_logit` until the
clip reads and clears it. Cost: one extra q k^T per layer per forward, in query chunks of at most 2^26 fp32 scores
(256 MiB) at a time, only when the flag is on.

`model.fused_projections` computes q/k/v (and the MLP's gate/up) as one matmul over the concatenated weights of
the separate Linear layers (`ProjectionGroups`): parameter names, shapes, initialisation, checkpoints, Hugging
Face mapping and FSDP units stay those of the split layers; tensor parallel overrides `_project`
(parallel/tensor.py).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks.alibi import alibi_bias, alibi_slopes
from model.blocks.attention_masks import build_attention_mask, flex_attention
from model.blocks.kv_cache import KVCache
from model.blocks.norm import RMSNorm
from model.blocks.projections import ProjectionGroups
from model.blocks.rope import apply_rope
from model.config import ModelConfig

MAX_LOGIT_CHUNK_ELEMENTS = 1 << 26  # max-logit passes: at most 256 MiB of fp32 scores at a time


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, H_kv, S, D] -> [B, H_kv * n_rep, S, D], each KV head shared by n_rep consecutive query heads."""
    if n_rep == 1:
        return x
    b, h_kv, s, d = x.shape
    return x[:, :, None].expand(b, h_kv, n_rep, s, d).reshape(b, h_kv * n_rep, s, d)


@torch.no_grad()
def causal_max_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    *,
    q_start: int = 0,
    sliding_window: Optional[int] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[n_heads] fp32: each query head's largest q.k * scale over the (query, key) pairs the causal mask (with the
    window and padding given) lets attend, which fused kernels never expose. Query rows go in chunks of at most
    MAX_LOGIT_CHUNK_ELEMENTS scores, so long sequences stay bounded. Shared by QK-clip (`Attention.record_max_logit`)
    and the per-layer health probe (`ScaledDotProductAttention.measure_max_logit`)."""
    k = repeat_kv(k, q.shape[1] // k.shape[1]).float()
    mask = build_attention_mask(
        q.shape[2],
        k.shape[2],
        q_start=q_start,
        sliding_window=sliding_window,
        key_padding_mask=key_padding_mask,
        device=q.device,
    )
    b, h, t, s = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    rows = max(1, MAX_LOGIT_CHUNK_ELEMENTS // (b * h * s))
    per_head = torch.full((h,), float("-inf"), device=q.device)
    for start in range(0, t, rows):
        scores = torch.matmul(q[:, :, start : start + rows].float(), k.transpose(-2, -1)) * scale
        visible = mask[..., start : start + rows, :]
        per_head = torch.maximum(per_head, scores.masked_fill(~visible, float("-inf")).amax(dim=(0, 2, 3)))
    return per_head


class ScaledDotProductAttention(nn.Module):
    """softmax(q k^T * scale + bias) v on [B, H, T, D] queries and [B, H_kv, S, D] keys/values (after RoPE).

    Query i sits at key slot `q_start + i` (0 in training; the cache length when decoding). Grouped KV heads are
    shared out here, so a replacement (ring attention) receives the smaller KV tensors. `masks` ({window: mask},
    model/blocks/attention_masks.py) holds the masks a training forward built once for all layers."""

    measure_max_logit = False  # a plain attribute (not a buffer): the launcher turns it on at log steps
    max_logit: Optional[torch.Tensor] = None  # the largest logit measured since the reader cleared it (0-dim fp32)

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
        masks: Optional[dict] = None,
    ) -> torch.Tensor:
        if self.measure_max_logit:
            self._measure_max_logit(q, k, q_start, q.shape[-1] ** -0.5 if scale is None else scale)
        grouped = q.shape[1] != k.shape[1]
        q_len, k_len = q.shape[2], k.shape[2]
        shared = masks.get(sliding_window) if masks is not None else None
        if shared is not None and not isinstance(shared, torch.Tensor):  # a FlexAttention BlockMask
            return flex_attention(q, k, v, block_mask=shared, scale=scale, softcap=softcap)
        plain = key_padding_mask is None and sliding_window is None and softcap is None and attn_bias is None
        if plain and shared is None and q_start == 0 and q_len == k_len:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=grouped)
        if plain and q_len == 1 and q_start == k_len - 1:  # one new token sees the whole cache
            return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=grouped)
        n_rep = q.shape[1] // k.shape[1]
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        mask = shared
        if mask is None:
            mask = build_attention_mask(
                q_len,
                k_len,
                q_start=q_start,
                sliding_window=sliding_window,
                key_padding_mask=key_padding_mask,
                device=q.device,
            )
        if softcap is None:
            if attn_bias is not None:
                mask = attn_bias.to(q.dtype).masked_fill(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        scores = softcap * torch.tanh(scores / softcap)
        if attn_bias is not None:
            scores = scores + attn_bias.to(scores.dtype)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)

    def _measure_max_logit(self, q: torch.Tensor, k: torch.Tensor, q_start: int, scale: float) -> None:
        """Fold the largest causal q.k * scale into `max_logit`. Sliding windows, document masks, ALiBi and
        softcaps are not applied: it measures how large the raw logits grow."""
        best = causal_max_logits(q, k, scale, q_start=q_start).max()
        self.max_logit = best if self.max_logit is None else torch.maximum(self.max_logit, best)


class Attention(ProjectionGroups, nn.Module):
    """MHA/GQA/MQA: q/k/v projections (optionally biased, optionally one matmul), optional QK-norm over each head
    (Qwen3, Gemma 3) or over all heads together (OLMo 2), RoPE or ALiBi, the layer's sliding window, and the output
    projection."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.fused_projections = cfg.fused_projections
        self.head_dim = cfg.attn_head_dim
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.dim, bias=cfg.attn_out_bias)
        # "head": one norm over head_dim shared by every head; "full": one over all heads' features (OLMo 2).
        self.qk_norm_full = cfg.qk_norm and cfg.qk_norm_scope == "full"
        q_width = cfg.n_heads * self.head_dim if self.qk_norm_full else self.head_dim
        k_width = self.n_kv_heads * self.head_dim if self.qk_norm_full else self.head_dim
        self.q_norm = RMSNorm(q_width, cfg.norm_eps, unit_offset=cfg.rmsnorm_unit_offset) if cfg.qk_norm else None
        self.k_norm = RMSNorm(k_width, cfg.norm_eps, unit_offset=cfg.rmsnorm_unit_offset) if cfg.qk_norm else None
        self.inner_attention = ScaledDotProductAttention()
        self.sliding_window = cfg.layer_window(layer_idx)
        self.softcap = cfg.attn_logit_softcap
        default_scale = cfg.query_pre_attn_scalar is None and cfg.rope_scaling.softmax_scale_factor == 1.0
        self.scale = None if default_scale else cfg.softmax_scale  # None: SDPA's own 1/sqrt(head_dim)
        self.use_alibi = cfg.pos_embedding == "alibi"
        # One slope per query head; under tensor parallelism this buffer must be sliced to the local heads.
        self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads) if self.use_alibi else None, persistent=False)
        self.record_max_logit = False  # QK-clip: keep each head's largest training logit in `max_logit`
        self.max_logit: Optional[torch.Tensor] = None  # [n_heads] fp32 running max since the clip last cleared it

    def reset_buffers(self) -> None:
        if self.use_alibi:
            self.alibi_slopes = alibi_slopes(self.n_heads).to(self.wq.weight.device)

    def _record_max_logit(
        self, q: torch.Tensor, k: torch.Tensor, q_start: int, key_padding_mask: Optional[torch.Tensor]
    ) -> None:
        scale = self.scale if self.scale is not None else self.head_dim**-0.5
        per_head = causal_max_logits(
            q, k, scale, q_start=q_start, sliding_window=self.sliding_window, key_padding_mask=key_padding_mask
        )
        self.max_logit = per_head if self.max_logit is None else torch.maximum(self.max_logit, per_head)

    def new_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype, device) -> KVCache:
        """An empty cache for decoding `batch_size` sequences of up to `max_len` tokens with this layer."""
        return KVCache(batch_size, self.n_kv_heads, max_len, self.head_dim, dtype=dtype, device=device)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
        masks: Optional[dict] = None,
    ) -> torch.Tensor:
        """x [B, T, dim]; rope: (cos, sin) at the tokens' positions; attention_mask [B, keys] (1 = real token)
        over all keys seen (cached ones included); masks: the forward's shared masks (Transformer.forward)."""
        bsz, seqlen, _ = x.shape
        q, k, v = self._project(x, (self.wq, self.wk, self.wv))
        if self.qk_norm_full:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(bsz, seqlen, -1, self.head_dim)
        k = k.view(bsz, seqlen, -1, self.head_dim)
        v = v.view(bsz, seqlen, -1, self.head_dim)
        if self.q_norm is not None and not self.qk_norm_full:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q_start = 0
        if cache is not None:
            k, v, q_start = cache.update(k, v)
            # The cache keeps the parameters' dtype; the step may compute in another (autocast, or FSDP's bf16
            # parameters over fp32 masters), and SDPA takes one dtype.
            k, v = k.to(q.dtype), v.to(q.dtype)
        key_padding_mask = None
        if attention_mask is not None:
            key_padding_mask = attention_mask[:, : k.shape[2]]
        if self.record_max_logit and self.training:
            self._record_max_logit(q, k, q_start, key_padding_mask)
        attn_bias = None
        if self.use_alibi:
            if cache is None and positions is not None:
                q_pos = k_pos = positions
            else:  # key slots: with left padding, slot distance equals position distance for every visible key
                q_pos = torch.arange(q_start, q_start + seqlen, device=x.device)
                k_pos = torch.arange(k.shape[2], device=x.device)
            attn_bias = alibi_bias(self.alibi_slopes, q_pos, k_pos)
        # Context parallel's replacement sees other sequence chunks than the shared masks describe: it builds its own
        # window masks, and document masking with it is refused by the layout rules (parallel/dims.py).
        extra = (
            {"masks": masks} if masks is not None and type(self.inner_attention) is ScaledDotProductAttention else {}
        )
        out = self.inner_attention(
            q,
            k,
            v,
            q_start=q_start,
            key_padding_mask=key_padding_mask,
            sliding_window=self.sliding_window,
            softcap=self.softcap,
            attn_bias=attn_bias,
            scale=self.scale,
            **extra,
        )
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))
