"""One multi-token-prediction module (DeepSeek-V3, section 2.2): a denser training signal from one more decoder layer.

Module k (1-based) sees, at position i, the previous depth's hidden state there (the main model's final-normed
output for k = 1) and the embedding of token i + k, and its output goes through the shared head to predict token
i + k + 1. The two inputs are normalised apart and projected from 2 * dim back to dim; the layer is an ordinary
TransformerBlock numbered after the main ones, so it is MoE or dense, local or global, by the same rules. The
chaining, the shared embedding and head, and the loss live in Transformer, which owns those. Parameter names map
one to one onto Hugging Face's MtpLayer (enorm, hnorm, eh_proj, the block, shared_head.norm) in model/hf.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from model.blocks.block import TransformerBlock
from model.blocks.norm import build_norm
from model.config import ModelConfig


class MultiTokenPrediction(nn.Module):
    def __init__(self, cfg: ModelConfig, depth: int) -> None:
        super().__init__()
        self.embedding_norm = build_norm(cfg)
        self.hidden_norm = build_norm(cfg)
        self.projection = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = TransformerBlock(cfg, cfg.n_layers + depth)
        self.norm = build_norm(cfg)

    def forward(
        self,
        hidden: torch.Tensor,
        embedded: torch.Tensor,
        rope: Optional[tuple[torch.Tensor, torch.Tensor]],
        *,
        positions: torch.Tensor,
        masks: Optional[dict] = None,
    ) -> torch.Tensor:
        """hidden, embedded [B, T, dim] -> this depth's normed hidden state [B, T, dim] (the next depth's input)."""
        x = self.projection(torch.cat([self.embedding_norm(embedded), self.hidden_norm(hidden)], dim=-1))
        return self.norm(self.block(x, rope, positions=positions, masks=masks))
