"""The decoder: embeddings, a ModuleDict of blocks, final norm and output head, all chosen by ModelConfig.

Plain PyTorch with no parallelism: `parallel/` lays it out afterwards. Layers live in an `nn.ModuleDict` keyed by
their index so parameter names survive a pipeline split (a stage is this class with some layers deleted and
`tok_embeddings` / `norm` / `output` set to None). Weight initialisation is `init_weights()`, separate from
construction, so a large model can be built on the meta device and materialised shard by shard.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks.attention import Attention
from model.blocks.attention_masks import document_ids, shared_masks
from model.blocks.block import TransformerBlock
from model.blocks.mla import MultiHeadLatentAttention
from model.blocks.moe import GroupedExperts, MoE
from model.blocks.mtp import MultiTokenPrediction
from model.blocks.norm import LayerNorm, RMSNorm, build_norm
from model.blocks.rope import RotaryEmbedding
from model.config import ModelConfig, RopeScalingConfig
from model.lora import apply_lora, lora_modules
from model.loss import chunked_cross_entropy

_OUTPUT_PROJECTIONS = ("wo", "w2")  # residual-branch outputs, initialised smaller (GPT-2 / Megatron)


@functools.lru_cache(maxsize=None)
def _rounded(value: float, dtype: torch.dtype) -> float:
    """`value` rounded to `dtype`, as a Python float (what multiplying by a tensor of that dtype would use)."""
    return torch.tensor(value, dtype=dtype).item()


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
        # Multi-token prediction modules (training only), after the output head in the data flow.
        self.mtp: Optional[nn.ModuleDict] = (
            nn.ModuleDict({str(k): MultiTokenPrediction(cfg, k) for k in range(cfg.mtp_depth)})
            if cfg.mtp_depth
            else None
        )
        # RoPE of the global layers, and Gemma 3's unscaled one of the sliding-window layers.
        rope = cfg.pos_embedding == "rope"
        self.rope = RotaryEmbedding(cfg.rope_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling) if rope else None
        self.local_rope = (
            RotaryEmbedding(cfg.rope_dim, cfg.max_seq_len, cfg.local_rope_theta, RopeScalingConfig())
            if rope and cfg.local_rope_theta is not None
            else None
        )
        self._local_layers = {str(i) for i in range(cfg.n_layers + cfg.mtp_depth) if cfg.uses_local_rope(i)}
        # Gemma multiplies the token embeddings by sqrt(dim) rounded to the compute dtype; a Python float (not a
        # tensor) so a sequence-parallel DTensor stream takes it too.
        self._embed_scale = math.sqrt(cfg.dim) if cfg.scale_embeddings else None
        # The last forward's loss terms by name, detached (reading them changes nothing). `last_aux_losses`: the
        # auxiliary objectives (mtp_loss, moe_aux_loss, moe_router_z_loss, whichever apply), the figures a trainer
        # logs beside the loss; `last_loss_terms`: those plus the next-token terms ce_loss and z_loss.
        self.last_aux_losses: dict[str, torch.Tensor] = {}
        self.last_loss_terms: dict[str, torch.Tensor] = {}
        if cfg.lora.enabled:  # adapters on the chosen projections, the rest frozen (model/lora.py)
            apply_lora(self, cfg.lora)

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
        unit norms (zero weights for Gemma's unit-offset norms), zero expert biases; recompute the RoPE/ALiBi
        buffers (needed after `to_empty` from the meta device)."""
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
            elif isinstance(module, (Attention, MultiHeadLatentAttention, MoE, RotaryEmbedding)):
                module.reset_buffers()
        for _, module in lora_modules(self):  # after the base, so its weights are those of the seed without LoRA
            module.reset_adapter()

    def _ropes(self, positions: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        ropes = {}
        if self.rope is not None:
            ropes["global"] = self.rope(positions)
        if self.local_rope is not None:
            ropes["local"] = self.local_rope(positions)
        return ropes

    def forward(
        self,
        tokens: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        cache: Optional[dict[str, Any]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        hidden_states: bool = False,
    ) -> torch.Tensor:
        """tokens [B, T] (or hidden [B, T, dim] when tok_embeddings is None); labels [B, T] (already shifted,
        -100 ignored) -> scalar loss, else logits [B, T, V] (hidden states when output is None).

        positions [T] or [B, T]: defaults to arange (continuing after the cache when decoding).
        cache: {layer name: its attention's cache (`new_caches`)} for incremental decoding.
        attention_mask [B, keys] (1 real, 0 padding) over every key slot attended (cached ones included).
        hidden_states: return the final-normed hidden states [B, T, dim] instead of logits, for a caller that needs
        the logits of a few positions only (`self.logits(h[...])`: evaluation never builds [B, T, vocab])."""
        h = self._embed(tokens) if self.tok_embeddings is not None else tokens
        seqlen = h.shape[1]
        if positions is None:
            start = next(iter(cache.values())).length if cache else 0
            positions = torch.arange(start, start + seqlen, device=h.device)
        if seqlen > self.cfg.max_seq_len and (self.rope is not None or self.pos_embeddings is not None):
            raise ValueError(f"sequence of {seqlen} tokens exceeds model.max_seq_len={self.cfg.max_seq_len}")
        if self.pos_embeddings is not None:
            h = h + self.pos_embeddings(positions)
        ropes = self._ropes(positions)
        masks = self._shared_masks(tokens, h) if cache is None and attention_mask is None else None
        extra = {"masks": masks} if masks is not None else {}
        self._record_moe_losses(True)
        for name, layer in self.layers.items():
            layer_cache = cache[name] if cache is not None else None
            rope = ropes.get("local" if name in self._local_layers else "global")
            h = layer(h, rope, positions=positions, cache=layer_cache, attention_mask=attention_mask, **extra)
        if self.norm is not None:
            h = self.norm(h)
        if self.output is None or labels is None:
            # An earlier pipeline stage's MoE losses are logged but cannot join a loss computed elsewhere.
            self._keep_loss_terms({}, self._moe_loss_terms())
            return h if self.output is None or hidden_states else self.logits(h)
        ce, z = chunked_cross_entropy(
            h, labels, self._head, chunk_size=self.cfg.loss_chunk_size, with_z_loss=self.cfg.z_loss_weight > 0
        )
        loss = ce
        next_token = {}
        if self.cfg.z_loss_weight > 0:
            loss = loss + self.cfg.z_loss_weight * z
            next_token["z_loss"] = z
        aux = {}
        # Held-out evaluation (eval mode) measures the next-token loss alone, comparable with runs without it.
        if self.mtp is not None and self.training:
            aux["mtp_loss"] = self._mtp_loss(h, labels, ropes, positions, masks)
            loss = loss + self.cfg.mtp_loss_weight * aux["mtp_loss"]
        aux.update(self._moe_loss_terms())  # after the MTP modules, whose MoE layers count too
        if "moe_aux_loss" in aux:
            loss = (
                loss
                + self.cfg.moe.aux_loss_weight * aux["moe_aux_loss"]
                + self.cfg.moe.router_z_loss_weight * aux["moe_router_z_loss"]
            )
        next_token["ce_loss"] = ce
        self._keep_loss_terms(next_token, aux)
        return loss

    def _keep_loss_terms(self, next_token: dict[str, torch.Tensor], aux: dict[str, torch.Tensor]) -> None:
        """Keep the forward's loss terms, detached, in `last_aux_losses` and `last_loss_terms`."""
        self.last_aux_losses = {k: v.detach() for k, v in aux.items()}
        self.last_loss_terms = {**{k: v.detach() for k, v in next_token.items()}, **self.last_aux_losses}

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        return h * _rounded(self._embed_scale, h.dtype) if self._embed_scale is not None else h

    def _mtp_loss(
        self, h: torch.Tensor, labels: torch.Tensor, ropes: dict, positions: torch.Tensor, masks: Optional[dict]
    ) -> torch.Tensor:
        """Mean over the MTP modules of their cross-entropy. Module k (1-based) at position i takes the previous
        depth's state there with the embedding of token i + k (labels[i + k - 1]) and predicts token i + k + 1
        (labels[i + k]); the last k positions, and those whose input token is an ignored label, have no target."""
        losses = []
        for name, module in self.mtp.items():
            k = int(name) + 1
            ahead = F.pad(labels[:, k - 1 :], (0, k - 1), value=-100)
            targets = F.pad(labels[:, k:], (0, k), value=-100).masked_fill(ahead == -100, -100)
            rope = ropes.get("local" if str(self.cfg.n_layers + k - 1) in self._local_layers else "global")
            h = module(h, self._embed(ahead.clamp(min=0)), rope, positions=positions, masks=masks)
            loss, _ = chunked_cross_entropy(h, targets, self._head, chunk_size=self.cfg.loss_chunk_size)
            losses.append(loss)
        return torch.stack(losses).mean()

    def _shared_masks(self, tokens: torch.Tensor, h: torch.Tensor) -> Optional[dict]:
        """The attention masks of a whole-sequence forward, built once for every layer: sliding windows, document
        boundaries (model.document_mask_eos_id) and soft-capped scores need one; plain causal layers do not."""
        cfg = self.cfg
        if cfg.mla is not None:  # latent attention builds its masks per layer
            return None
        docs = None
        if cfg.document_mask_eos_id is not None:
            if self.tok_embeddings is None:
                raise ValueError(
                    "model.document_mask_eos_id needs the token ids, which a pipeline stage after the "
                    "first does not see: use parallel.pp=1"
                )
            docs = document_ids(tokens, cfg.document_mask_eos_id)
        mtp_layers = [cfg.n_layers + k for k in range(cfg.mtp_depth)] if self.mtp is not None else []
        windows = [cfg.layer_window(i) for i in [*map(int, self.layers), *mtp_layers]]
        return shared_masks(
            windows,
            h.shape[1],
            h.device,
            backend=cfg.attention_backend,
            docs=docs,
            softcap=cfg.attn_logit_softcap is not None,
        )

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Output head (with the optional final-logit softcap) on final-normed hidden states: [..., vocab_size]."""
        logits = self._head(h)
        return logits[..., : self.cfg.vocab_size] if logits.shape[-1] != self.cfg.vocab_size else logits

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """The output head over the vocabulary padded to model.vocab_multiple: the padded columns come from zero
        weight rows added for this matmul only (parameters keep vocab_size rows) and are masked to -inf after the
        softcap, so they never win an argmax, hold no probability and get no gradient."""
        cfg = self.cfg
        pad = cfg.padded_vocab_size - cfg.vocab_size
        if pad:
            logits = F.linear(h, F.pad(self.output.weight, (0, 0, 0, pad)))
        else:
            logits = self.output(h)
        cap = cfg.final_logit_softcap
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        if pad:
            padded = torch.arange(cfg.padded_vocab_size, device=logits.device) >= cfg.vocab_size
            logits = logits.masked_fill(padded, float("-inf"))
        return logits

    def _moe_modules(self) -> list[MoE]:
        blocks = [self.layers] if self.mtp is None else [self.layers, self.mtp]
        return [m for part in blocks for m in part.modules() if isinstance(m, MoE)]

    def _record_moe_losses(self, on: bool) -> None:
        for moe in self._moe_modules():
            moe.record_losses = on

    def _moe_loss_terms(self) -> dict[str, torch.Tensor]:
        """{moe_aux_loss, moe_router_z_loss}: the mean over this model's MoE layers of the losses their last
        forward left, cleared after reading so no autograd graph outlives the step; {} without MoE layers."""
        aux, z = [], []
        for moe in self._moe_modules():
            if moe.aux_loss is not None:
                aux.append(moe.aux_loss)
                z.append(moe.router_z_loss)
                moe.aux_loss = moe.router_z_loss = None
        self._record_moe_losses(False)
        if not aux:
            return {}
        return {"moe_aux_loss": torch.stack(aux).mean(), "moe_router_z_loss": torch.stack(z).mean()}

    def new_caches(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """One empty decoding cache per layer (KVCache, or LatentKVCache for latent attention), in the
        parameters' dtype and device."""
        param = next(self.parameters())
        return {
            name: layer.attention.new_cache(batch_size, max_len, dtype=param.dtype, device=param.device)
            for name, layer in self.layers.items()
        }

    @torch.no_grad()
    def update_expert_biases(
        self, reduce_load: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    ) -> Optional[torch.Tensor]:
        """Auxiliary-loss-free balancing, to be called once after every optimizer step: each MoE layer's
        expert_bias moves against the load its experts took since the last call, and the counts restart.

        The loads are this process's token-assignments [MoE layers, experts]; `reduce_load` (e.g.
        parallel.expert.load_reducer) sums them over the data-parallel ranks so every rank applies the same update
        from the global batch's load. Returns the mean over layers of (max load / mean load), 1 when balanced, as
        a 0-dim tensor (no host sync), or None without MoE layers. Layers without expert_bias only reset counts."""
        moes = self._moe_modules()
        if not moes:
            return None
        loads = torch.stack([m.take_load() for m in moes])
        if reduce_load is not None:
            loads = reduce_load(loads)
        for moe, load in zip(moes, loads):
            moe.update_expert_bias(load)
        return (loads.max(dim=-1).values / loads.mean(dim=-1).clamp(min=1e-9)).mean()
