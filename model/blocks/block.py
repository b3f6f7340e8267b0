"""One decoder layer: attention (standard or latent) then feed-forward (dense or MoE), each wrapped by the
configured norm placement.

pre (Llama):            h = x + attn(norm(x));            out = h + ffn(norm(h))
post (BERT/orig.):      h = norm(x + attn(x));            out = norm(h + ffn(h))
sandwich (Gemma 2/3):   h = x + norm'(attn(norm(x)));     out = h + norm'(ffn(norm(h)))
branch_output (OLMo 2): h = x + norm'(attn(x));           out = h + norm'(ffn(h))
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from model.blocks.attention import Attention
from model.blocks.mla import MultiHeadLatentAttention
from model.blocks.mlp import FeedForward
from model.blocks.moe import MoE
from model.blocks.norm import build_norm
from model.config import BRANCH_NORM_POSITIONS, ModelConfig


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.norm_position = cfg.norm_position
        pre_norms = cfg.norm_position != "branch_output"  # on the branch inputs (pre/sandwich) or after the add (post)
        if pre_norms:
            self.attention_norm = build_norm(cfg)
        attention_cls = MultiHeadLatentAttention if cfg.mla is not None else Attention
        self.attention = attention_cls(cfg, layer_idx)
        if pre_norms:
            self.ffn_norm = build_norm(cfg)
        if cfg.is_moe_layer(layer_idx):
            self.moe = MoE(cfg.dim, cfg.moe, cfg.expert_hidden_dim, cfg.shared_experts_hidden_dim)
            self.feed_forward = None
        else:
            self.feed_forward = FeedForward(
                cfg.dim, cfg.ffn_hidden_dim, mlp_type=cfg.mlp_type, bias=cfg.mlp_bias, fused=cfg.fused_projections
            )
            self.moe = None
        if cfg.norm_position in BRANCH_NORM_POSITIONS:  # norms on the branch outputs
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
        cache=None,
        attention_mask: Optional[torch.Tensor] = None,
        masks: Optional[dict] = None,
    ) -> torch.Tensor:
        # `masks`: the attention masks of this forward, shared by every layer (Transformer.forward).
        extra = {"masks": masks} if masks is not None else {}

        def attn(h: torch.Tensor) -> torch.Tensor:
            return self.attention(h, rope, positions=positions, cache=cache, attention_mask=attention_mask, **extra)

        if self.norm_position == "pre":
            h = x + attn(self.attention_norm(x))
            return h + self._ffn(self.ffn_norm(h))
        if self.norm_position == "post":
            h = self.attention_norm(x + attn(x))
            return self.ffn_norm(h + self._ffn(h))
        if self.norm_position == "sandwich":
            h = x + self.post_attention_norm(attn(self.attention_norm(x)))
            return h + self.post_ffn_norm(self._ffn(self.ffn_norm(h)))
        h = x + self.post_attention_norm(attn(x))
        return h + self.post_ffn_norm(self._ffn(h))
