"""Multi-head latent attention (DeepSeek-V2/V3).

Keys and values come from a small latent: x -> wkv_a -> [latent (kv_lora_rank) | k_rope (qk_rope_head_dim)];
the latent is normed and up-projected by wkv_b into every head's k_nope and v, while k_rope carries RoPE and is
shared by all heads ("decoupled" RoPE: positions never pass through the up-projection, so the latent itself is
position-free). Queries are [q_nope | q_rope] per head, from a full-rank projection or a low-rank one with its
own norm (wq_a -> q_a_norm -> wq_b). Decoding caches only the normed latent and the rotated k_rope
(`LatentKVCache`: kv_lora_rank + qk_rope_head_dim numbers per token and layer), rebuilding per-head keys and
values from it at each step, as transformers does. (Absorbing wkv_b into the query and output projections would
save that rebuild; it is not done here.)

The softmax(QK^T)V step is the same `inner_attention` module as standard attention (queries and keys of width
nope + rope, values of width v_head_dim), so context parallelism swaps it the same way.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from model.blocks.attention import ScaledDotProductAttention
from model.blocks.kv_cache import LatentKVCache
from model.blocks.norm import RMSNorm
from model.blocks.rope import apply_rope
from model.config import ModelConfig

# DeepSeek's reference code and transformers build the two latent norms with RMSNorm's default eps, not the
# config's rms_norm_eps; checkpoints were trained that way.
LATENT_NORM_EPS = 1e-6


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        mla = cfg.mla
        self.n_heads = cfg.n_heads
        self.nope_dim, self.rope_dim, self.v_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
        self.kv_lora_rank = mla.kv_lora_rank
        qk_dim = mla.qk_head_dim
        if mla.q_lora_rank is None:
            self.wq = nn.Linear(cfg.dim, cfg.n_heads * qk_dim, bias=False)
            self.wq_a = self.q_a_norm = self.wq_b = None
        else:
            self.wq = None
            self.wq_a = nn.Linear(cfg.dim, mla.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = RMSNorm(mla.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(mla.q_lora_rank, cfg.n_heads * qk_dim, bias=False)
        self.wkv_a = nn.Linear(cfg.dim, mla.kv_lora_rank + mla.qk_rope_head_dim, bias=cfg.qkv_bias)
        self.kv_a_norm = RMSNorm(mla.kv_lora_rank, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(mla.kv_lora_rank, cfg.n_heads * (mla.qk_nope_head_dim + mla.v_head_dim), bias=False)
        self.wo = nn.Linear(cfg.n_heads * mla.v_head_dim, cfg.dim, bias=cfg.attn_out_bias)
        # A seam, like inner_attention: the rotary key part every head shares passes through here, so tensor
        # parallelism (each rank holding some heads) can sum its gradient over the ranks (parallel/tensor.py).
        self.shared_rope_key = nn.Identity()
        self.inner_attention = ScaledDotProductAttention()
        self.sliding_window = cfg.layer_window(layer_idx)
        self.softcap = cfg.attn_logit_softcap
        self.scale = cfg.softmax_scale
        self.use_alibi = False

    def reset_buffers(self) -> None:
        """No buffers (the interface standard attention has)."""

    def new_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype, device) -> LatentKVCache:
        return LatentKVCache(batch_size, max_len, self.kv_lora_rank, self.rope_dim, dtype=dtype, device=device)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        cache: Optional[LatentKVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """x [B, T, dim]; rope: (cos, sin) of width qk_rope_head_dim at the tokens' positions; attention_mask
        [B, keys] (1 = real token) over all keys seen (cached ones included)."""
        del positions  # positions reach attention only through `rope`
        bsz, seqlen, _ = x.shape
        q = self.wq(x) if self.wq is not None else self.wq_b(self.q_a_norm(self.wq_a(x)))
        q = q.view(bsz, seqlen, -1, self.nope_dim + self.rope_dim)  # -1: the local heads under tensor parallel
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rope = self.wkv_a(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_norm(latent)
        k_rope = self.shared_rope_key(k_rope).unsqueeze(2)  # one rotary key part, shared by every head
        if rope is not None:
            q_rope, k_rope = apply_rope(q_rope, *rope), apply_rope(k_rope, *rope)
        k_rope = k_rope.squeeze(2)
        q_start = 0
        if cache is not None:
            latent, k_rope, q_start = cache.update(latent, k_rope)
            latent, k_rope = latent.to(q.dtype), k_rope.to(q.dtype)
        keys_len = latent.shape[1]
        kv = self.wkv_b(latent).view(bsz, keys_len, -1, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(-1, -1, k_nope.shape[2], -1)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        key_padding_mask = attention_mask[:, :keys_len] if attention_mask is not None else None
        out = self.inner_attention(
            q,
            k,
            v,
            q_start=q_start,
            key_padding_mask=key_padding_mask,
            sliding_window=self.sliding_window,
            softcap=self.softcap,
            scale=self.scale,
        )
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))
