"""The decoder: embeddings, a ModuleDict of blocks, final norm and output head, all chosen by ModelConfig.

Plain PyTorch with no parallelism: `parallel/` lays it out afterwards. Layers live in an `nn.ModuleDict` keyed by
their index so parameter names survive a pipeline split (a stage is this class with some layers deleted and
`tok_embeddings` / `norm` / `output` set to None). Weight initialisation is `init_weights()`, separate from
construction, so a large model can be built on the meta device and materialised shard by shard.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from model.blocks.attention import Attention
from model.blocks.block import TransformerBlock
from model.blocks.kv_cache import KVCache
from model.blocks.moe import GroupedExperts, MoE
from model.blocks.norm import LayerNorm, RMSNorm, build_norm
from model.blocks.rope import rope_cos_sin
from model.config import ModelConfig
from model.loss import chunked_cross_entropy

_OUTPUT_PROJECTIONS = ("wo", "w2")  # residual-branch outputs, initialised smaller (GPT-2 / Megatron)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings: Optional[nn.Embedding] = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embeddings: Optional[nn.Embedding] = (
            nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.pos_embedding == "learned" else None
        )
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg, i) for i in range(cfg.n_layers)})
        # Post-norm blocks already end in a norm; a final one would normalise twice.
        self.norm: Optional[nn.Module] = build_norm(cfg) if cfg.norm_position != "post" else nn.Identity()
        self.output: Optional[nn.Linear] = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = self._rope_tables() if cfg.pos_embedding == "rope" else (None, None)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.last_aux_losses: dict[str, torch.Tensor] = {}

    def _rope_tables(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        cos, sin = rope_cos_sin(cfg.attn_head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        return (cos, sin) if device is None else (cos.to(device), sin.to(device))

    def _apply(self, fn, recurse=True):
        # `to_empty()` from the meta device builds a new Parameter per module (meta and CPU tensors cannot share
        # storage), which silently unties tied embeddings; re-tie after any device/dtype move.
        result = super()._apply(fn, recurse)
        if self.cfg.tie_embeddings and self.output is not None and self.tok_embeddings is not None:
            if self.output.weight is not self.tok_embeddings.weight:
                self.output.weight = self.tok_embeddings.weight
        return result

    @torch.no_grad()
    def init_weights(self) -> None:
        """Normal(0, init_std) weights, output projections (wo, w2) scaled by 1/sqrt(2 * n_layers), zero biases,
        unit norms; recompute the RoPE/ALiBi buffers (needed after `to_empty` from the meta device)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_out = name.rsplit(".", 1)[-1] in _OUTPUT_PROJECTIONS
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, GroupedExperts):
                nn.init.normal_(module.w1, mean=0.0, std=std)
                nn.init.normal_(module.w3, mean=0.0, std=std)
                nn.init.normal_(module.w2, mean=0.0, std=out_std)
            elif isinstance(module, (RMSNorm, LayerNorm)):
                module.reset_parameters()
            elif isinstance(module, Attention):
                module.reset_buffers()
        if self.rope_cos is not None:
            self.rope_cos, self.rope_sin = self._rope_tables(self.rope_cos.device)

    def forward(
        self,
        tokens: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        cache: Optional[dict[str, KVCache]] = None,
        attention_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """tokens [B, T] (or hidden [B, T, dim] when tok_embeddings is None); labels [B, T] (already shifted,
        -100 ignored) -> scalar loss, else logits [B, T, V] (hidden states when output is None).

        positions [T] or [B, T]: defaults to arange (continuing after the cache when decoding).
        cache: {layer name: KVCache} for incremental decoding. attention_mask [B, keys] (1 real, 0 padding)
        over every key slot attended (cached ones included)."""
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        seqlen = h.shape[1]
        if positions is None:
            start = next(iter(cache.values())).length if cache else 0
            positions = torch.arange(start, start + seqlen, device=h.device)
        if seqlen > self.cfg.max_seq_len and (self.rope_cos is not None or self.pos_embeddings is not None):
            raise ValueError(f"sequence of {seqlen} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if self.pos_embeddings is not None:
            h = h + self.pos_embeddings(positions)
        rope = (self.rope_cos[positions], self.rope_sin[positions]) if self.rope_cos is not None else None
        self._record_moe_losses(True)
        for name, layer in self.layers.items():
            layer_cache = cache[name] if cache is not None else None
            h = layer(h, rope, positions=positions, cache=layer_cache, attention_mask=attention_mask)
        moe_aux, moe_z = self._collect_moe_losses()
        if self.norm is not None:
            h = self.norm(h)
        aux: dict[str, torch.Tensor] = {}
        if moe_aux is not None:
            aux["moe_aux_loss"], aux["moe_router_z_loss"] = moe_aux, moe_z
        if self.output is None:
            # An earlier pipeline stage: its MoE losses are logged but cannot join a loss computed elsewhere.
            self.last_aux_losses = {k: v.detach() for k, v in aux.items()}
            return h
        if labels is None:
            self.last_aux_losses = {k: v.detach() for k, v in aux.items()}
            return self.logits(h)
        ce, z = chunked_cross_entropy(
            h, labels, self.logits, chunk_size=self.cfg.loss_chunk_size, with_z_loss=self.cfg.z_loss_weight > 0
        )
        loss = ce
        if self.cfg.z_loss_weight > 0:
            loss = loss + self.cfg.z_loss_weight * z
            aux["z_loss"] = z
        if moe_aux is not None:
            loss = loss + self.cfg.moe.aux_loss_weight * moe_aux + self.cfg.moe.router_z_loss_weight * moe_z
        aux["ce_loss"] = ce
        self.last_aux_losses = {k: v.detach() for k, v in aux.items()}
        return loss

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output head (with the optional final-logit softcap) on final-normed hidden states."""
        logits = self.output(h)
        cap = self.cfg.final_logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def _moe_modules(self) -> list[MoE]:
        return [m for m in self.layers.modules() if isinstance(m, MoE)]

    def _record_moe_losses(self, on: bool) -> None:
        for moe in self._moe_modules():
            moe.record_losses = on

    def _collect_moe_losses(self) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Mean over this model's MoE layers of the losses their last forward left, cleared after reading so no
        autograd graph outlives the step."""
        aux, z = [], []
        for moe in self._moe_modules():
            if moe.aux_loss is not None:
                aux.append(moe.aux_loss)
                z.append(moe.router_z_loss)
                moe.aux_loss = moe.router_z_loss = None
        self._record_moe_losses(False)
        if not aux:
            return None, None
        return torch.stack(aux).mean(), torch.stack(z).mean()
