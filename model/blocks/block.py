"""One decoder layer: attention then feed-forward (dense or MoE), each wrapped by the configured norm placement.

pre (Llama):       h = x + attn(norm(x));            out = h + ffn(norm(h))
post (BERT/orig.): h = norm(x + attn(x));            out = norm(h + ffn(h))
sandwich (Gemma2): h = x + norm'(attn(norm(x)));     out = h + norm'(ffn(norm(h)))
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from model.blocks.attention import Attention
from model.blocks.kv_cache import KVCache
from model.blocks.mlp import FeedForward
from model.blocks.moe import MoE
from model.blocks.norm import build_norm
from model.config import ModelConfig


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.norm_position = cfg.norm_position
        self.attention_norm = build_norm(cfg)
        self.attention = Attention(cfg)
        self.ffn_norm = build_norm(cfg)
        if cfg.is_moe_layer(layer_idx):
            moe = cfg.moe
            hidden = moe.expert_hidden_dim or cfg.ffn_hidden_dim
            self.moe = MoE(
                cfg.dim, hidden, moe.num_experts, moe.top_k, norm_topk_prob=moe.norm_topk_prob,
                num_shared_experts=moe.num_shared_experts, shared_hidden_dim=moe.shared_expert_hidden_dim,
            )
            self.feed_forward = None
        else:
            self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden_dim, mlp_type=cfg.mlp_type, bias=cfg.mlp_bias)
            self.moe = None
        if cfg.norm_position == "sandwich":
            self.post_attention_norm = build_norm(cfg)
            self.post_ffn_norm = build_norm(cfg)

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x) if self.moe is not None else self.feed_forward(x)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        cache: Optional[KVCache] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        def attn(h: torch.Tensor) -> torch.Tensor:
            return self.attention(h, rope, positions=positions, cache=cache, attention_mask=attention_mask)

        if self.norm_position == "pre":
            h = x + attn(self.attention_norm(x))
            return h + self._ffn(self.ffn_norm(h))
        if self.norm_position == "post":
            h = self.attention_norm(x + attn(x))
            return self.ffn_norm(h + self._ffn(h))
        h = x + self.post_attention_norm(attn(self.attention_norm(x)))
        return h + self.post_ffn_norm(self._ffn(self.ffn_norm(h)))
