"""What a model costs, from its config alone: parameters, training FLOPs per token, decoding-cache size.

Closed-form arithmetic over `ModelConfig` (no model is built), so it runs anywhere and at once: the trainer's MFU
(launcher/metrics.py) takes `flops_per_token`, the pipeline planner (parallel/stage_plan.py) balances stages by
`layer_params` and `attention_flops_per_token`, and the layout estimate (parallel/estimate.py) sizes memory from
`layer_params`. Tests check the counts against our model and Hugging Face models built on the meta device.

Conventions (stated once, used everywhere):
- Parameters are counted once even when tied (`tie_embeddings`): the published counts do the same.
  `embedding` parameters are the input-side tables (token + learned position embeddings).
- Training FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B) as torchtitan and nanoGPT use them:
  `6 * N + 12 * L * d_attn * T`, where N is the number of *active* parameters that take part in matmuls, i.e.
  all active parameters minus the input embedding tables, with the output projection counted even when it is tied
  (the lookup is free, the unembedding matmul is not); d_attn = n_heads * head_dim; T is the attention context,
  seq_len, or the sliding window when shorter (causal attention is not halved, as in PaLM). MoE layers count the
  router, the top_k routed experts and the shared experts. Multi-token-prediction modules (`mtp_depth`, DeepSeek-V3)
  count their norms, 2*dim x dim projection and decoder layer as parameters; in FLOPs each adds its layer's
  attention and one more pass through the output head.
- LoRA (model.lora) adapters are counted apart (`lora_params`, `lora_layer_params`): the counts above are the
  base model's; FLOPs per token stay the base's (the adapters add 6 * r * (in + out) per adapted Linear, under 1%
  at usual ranks, and the frozen base skips its weight gradients, which the figure does not subtract).
- `LayerParams` splits each layer's parameters by how layouts divide them (tensor parallel, expert parallel,
  replicated), which is what the layout estimate needs; MLA's low-rank down-projections (wq_a, wkv_a) and latent
  norms stay replicated under tensor parallelism, as parallel/tensor.py lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from model.config import GATED_MLP_TYPES, ModelConfig

# ---------------------------------------------------------------------------------------------------------------
# Parameters


def _norm_params(cfg: ModelConfig, width: int) -> int:
    with_bias = cfg.norm_type == "layernorm" and cfg.norm_bias
    return width * (2 if with_bias else 1)


def final_norm_params(cfg: ModelConfig) -> int:
    """Post-norm blocks already end in a norm, so the model has no final one."""
    return 0 if cfg.norm_position == "post" else _norm_params(cfg, cfg.dim)


def _ffn_params(cfg: ModelConfig, hidden: int, mlp_type: str, bias: bool) -> int:
    if mlp_type in GATED_MLP_TYPES:
        return 3 * cfg.dim * hidden + ((2 * hidden + cfg.dim) if bias else 0)
    return 2 * cfg.dim * hidden + ((hidden + cfg.dim) if bias else 0)


@dataclass
class LayerParams:
    """Parameters of one TransformerBlock by how they are split across devices."""

    attention: int  # wq/wk/wv/wo (+ biases), MLA's up-projections: split by tp
    norms: int  # block norms, QK-norms, MLA's latent norms: replicated
    ffn: int  # dense FFN or shared experts: split by tp
    router: int  # MoE router (and Qwen2-MoE's shared-expert gate): replicated
    experts: int  # routed experts (all of them): split by ep and tp
    experts_active: int  # the top_k of them a token goes through
    attention_replicated: int = 0  # MLA's low-rank down-projections wq_a, wkv_a: replicated under tp

    @property
    def total(self) -> int:
        return self.attention + self.attention_replicated + self.norms + self.ffn + self.router + self.experts

    @property
    def active(self) -> int:
        return self.attention + self.attention_replicated + self.norms + self.ffn + self.router + self.experts_active


def _attention_params(cfg: ModelConfig) -> tuple[int, int, int]:
    """(tp-split, replicated, norm) parameters of one layer's attention."""
    if cfg.mla is not None:
        mla, heads = cfg.mla, cfg.n_heads
        split = heads * mla.v_head_dim * cfg.dim + (cfg.dim if cfg.attn_out_bias else 0)  # wo
        split += mla.kv_lora_rank * heads * (mla.qk_nope_head_dim + mla.v_head_dim)  # wkv_b
        kv_a = mla.kv_lora_rank + mla.qk_rope_head_dim
        replicated = cfg.dim * kv_a + (kv_a if cfg.qkv_bias else 0)  # wkv_a
        norms = mla.kv_lora_rank
        if mla.q_lora_rank is None:
            split += cfg.dim * heads * mla.qk_head_dim  # wq
        else:
            replicated += cfg.dim * mla.q_lora_rank + (mla.q_lora_rank if cfg.qkv_bias else 0)  # wq_a
            split += mla.q_lora_rank * heads * mla.qk_head_dim  # wq_b
            norms += mla.q_lora_rank
        return split, replicated, norms
    hd, q_dim, kv_dim = cfg.attn_head_dim, cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    split = cfg.dim * (q_dim + 2 * kv_dim) + q_dim * cfg.dim
    split += (q_dim + 2 * kv_dim) if cfg.qkv_bias else 0
    split += cfg.dim if cfg.attn_out_bias else 0
    norms = 0
    if cfg.qk_norm:
        norms = q_dim + kv_dim if cfg.qk_norm_scope == "full" else 2 * hd
    return split, 0, norms


def layer_params(cfg: ModelConfig, layer_idx: int) -> LayerParams:
    attention, replicated, attn_norms = _attention_params(cfg)
    n_block_norms = 4 if cfg.norm_position == "sandwich" else 2
    norms = n_block_norms * _norm_params(cfg, cfg.dim) + attn_norms
    moe = cfg.moe
    if moe is None or not cfg.is_moe_layer(layer_idx):
        ffn = _ffn_params(cfg, cfg.ffn_hidden_dim, cfg.mlp_type, cfg.mlp_bias)
        return LayerParams(attention, norms, ffn, 0, 0, 0, replicated)
    per_expert = 3 * cfg.dim * cfg.expert_hidden_dim
    shared = cfg.shared_experts_hidden_dim
    ffn = _ffn_params(cfg, shared, "swiglu", False) if shared else 0  # shared experts have no biases
    router = cfg.dim * moe.num_experts + (cfg.dim if moe.shared_expert_gate else 0)
    return LayerParams(attention, norms, ffn, router, moe.num_experts * per_expert, moe.top_k * per_expert, replicated)


def layer_vectors_in_matrix_counts(cfg: ModelConfig, layer_idx: int) -> int:
    """The biases and gate vectors that layer_params counts inside attention, ffn and router: what optim=muon leaves
    to AdamW there (launcher/optim.py: Muon takes matrices only)."""
    vectors = cfg.dim if cfg.attn_out_bias else 0
    if cfg.qkv_bias:
        if cfg.mla is None:
            vectors += (cfg.n_heads + 2 * cfg.kv_heads) * cfg.attn_head_dim
        else:
            vectors += cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim + (cfg.mla.q_lora_rank or 0)
    moe = cfg.moe
    if moe is None or not cfg.is_moe_layer(layer_idx):
        if cfg.mlp_bias:
            hidden = cfg.ffn_hidden_dim
            vectors += (2 * hidden + cfg.dim) if cfg.mlp_type in GATED_MLP_TYPES else (hidden + cfg.dim)
    elif moe.shared_expert_gate:
        vectors += cfg.dim
    return vectors


def _lora_projections(cfg: ModelConfig, layer_idx: int) -> dict[str, list[tuple[int, int, str]]]:
    """Target -> (in, out, tp split) of each Linear model/lora.py adapts in a layer; split: "col" (parallel/tensor.py
    shards the output features), "row" (the input features) or "none" (replicated, MLA's wq_a)."""
    d = cfg.dim
    if cfg.mla is not None:
        mla, heads = cfg.mla, cfg.n_heads
        q_out = heads * mla.qk_head_dim
        q = (
            [(d, q_out, "col")]
            if mla.q_lora_rank is None
            else [(d, mla.q_lora_rank, "none"), (mla.q_lora_rank, q_out, "col")]
        )
        projections = {"q": q, "o": [(heads * mla.v_head_dim, d, "row")]}
    else:
        q_dim, kv_dim = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
        projections = {
            "q": [(d, q_dim, "col")],
            "k": [(d, kv_dim, "col")],
            "v": [(d, kv_dim, "col")],
            "o": [(q_dim, d, "row")],
        }
    if cfg.is_moe_layer(layer_idx):  # the shared experts' MLP (gated); routed experts take no adapters
        hidden, gated = cfg.shared_experts_hidden_dim, True
    else:
        hidden, gated = cfg.ffn_hidden_dim, cfg.mlp_type in GATED_MLP_TYPES
    if hidden:
        projections["up"] = [(d, hidden, "col")]
        projections["down"] = [(hidden, d, "row")]
        if gated:
            projections["gate"] = [(d, hidden, "col")]
    return projections


def lora_layer_params(cfg: ModelConfig, layer_idx: int, *, base: bool = False) -> tuple[int, int]:
    """(tp-split, replicated) LoRA adapter parameters of one layer (model.lora): r * (in + out) per adapted
    Linear; under tensor parallel B of a column-parallel and A of a row-parallel projection are split. `base`:
    the adapted Linears' own weights instead (in * out each, held in model.lora.base_dtype)."""
    lora = cfg.lora
    if not lora.enabled:
        return 0, 0
    split = replicated = 0
    for target, linears in _lora_projections(cfg, layer_idx).items():
        if target not in lora.targets:
            continue
        for n_in, n_out, tp in linears:
            if base:
                split, replicated = (
                    (split, replicated + n_in * n_out) if tp == "none" else (split + n_in * n_out, replicated)
                )
                continue
            sharded = {"col": n_out, "row": n_in, "none": 0}[tp]
            split += lora.rank * sharded
            replicated += lora.rank * (n_in + n_out - sharded)
    return split, replicated


def lora_missing_targets(cfg: ModelConfig) -> list[str]:
    """model.lora.targets no layer of the model has (model/lora.py refuses them when building; this says so from
    the config alone, before any torch import)."""
    present = {t for i in range(cfg.n_layers + cfg.mtp_depth) for t in _lora_projections(cfg, i)}
    return [t for t in cfg.lora.targets if t not in present] if cfg.lora.enabled else []


def lora_params(cfg: ModelConfig) -> int:
    """Every LoRA adapter parameter of the model (MTP modules' layers included): what trains under model.lora."""
    return sum(sum(lora_layer_params(cfg, i)) for i in range(cfg.n_layers + cfg.mtp_depth))


@dataclass
class ParameterCounts:
    total: int  # every parameter once (tied embeddings once)
    active: int  # what one token goes through (MoE: top_k routed + shared experts)
    embedding: int  # input tables: token (+ learned position) embeddings
    output: int  # output projection weight (vocab * dim), whether tied or not
    tied: bool

    @property
    def flops_params(self) -> int:
        """N of the FLOPs convention: active parameters in matmuls (input tables out, output projection in)."""
        return self.active - self.embedding + (self.output if self.tied else 0)


def mtp_module_own_params(cfg: ModelConfig) -> int:
    """Parameters of one multi-token-prediction module outside its decoder layer: three norms and the
    2*dim -> dim projection (embedding and head are the model's)."""
    return 3 * _norm_params(cfg, cfg.dim) + 2 * cfg.dim * cfg.dim


def mtp_module_params(cfg: ModelConfig, depth: int) -> tuple[int, int]:
    """(total, active) parameters of multi-token-prediction module `depth` (0-based): its own parameters and its
    decoder layer (layer index n_layers + depth)."""
    layer = layer_params(cfg, cfg.n_layers + depth)
    own = mtp_module_own_params(cfg)
    return own + layer.total, own + layer.active


def parameter_counts(cfg: ModelConfig) -> ParameterCounts:
    cfg = ModelConfig.coerce(cfg)  # a ModelConfig, a Hydra node or a dict
    layers = [layer_params(cfg, i) for i in range(cfg.n_layers)]
    mtp = [mtp_module_params(cfg, k) for k in range(cfg.mtp_depth)]
    embedding = cfg.vocab_size * cfg.dim + (cfg.max_seq_len * cfg.dim if cfg.pos_embedding == "learned" else 0)
    output = cfg.vocab_size * cfg.dim
    outside = embedding + final_norm_params(cfg) + (0 if cfg.tie_embeddings else output)
    return ParameterCounts(
        total=outside + sum(p.total for p in layers) + sum(total for total, _ in mtp),
        active=outside + sum(p.active for p in layers) + sum(active for _, active in mtp),
        embedding=embedding,
        output=output,
        tied=cfg.tie_embeddings,
    )


def count_parameters(cfg: ModelConfig, *, active: bool = False, exclude_embedding: bool = False) -> int:
    """Number of parameters of `model.build(cfg)` (tied weights once); `active`: per token for MoE;
    `exclude_embedding`: minus the input embedding tables."""
    counts = parameter_counts(cfg)
    n = counts.active if active else counts.total
    return n - counts.embedding if exclude_embedding else n


def attention_context(cfg: ModelConfig, seq_len: int, layer_idx: Optional[int] = None) -> int:
    """Keys a query attends to: seq_len, or the sliding window when shorter (of layer `layer_idx`; None: the
    window every sliding layer has)."""
    window = cfg.sliding_window if layer_idx is None else cfg.layer_window(layer_idx)
    return min(seq_len, window) if window is not None else seq_len


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, layer_idx: int) -> float:
    """Training FLOPs per token of one layer's softmax(QK^T)V: 6 * T * (query/key width + value width)."""
    widths = cfg.n_heads * (cfg.attn_head_dim + cfg.v_head_dim)
    return 6.0 * attention_context(cfg, seq_len, layer_idx) * widths


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token: 6*N + 12*L*d_attn*T (see the module docstring)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    cfg = ModelConfig.coerce(cfg)  # a ModelConfig, a Hydra node or a dict
    n = parameter_counts(cfg).flops_params
    n += cfg.mtp_depth * cfg.vocab_size * cfg.dim  # each MTP module goes through the shared output head once more
    layers = range(cfg.n_layers + cfg.mtp_depth)  # the MTP modules' layers attend like the others
    return float(6 * n + sum(attention_flops_per_token(cfg, seq_len, i) for i in layers))


def kv_cache_elements_per_token(cfg: ModelConfig) -> int:
    """Numbers a decoding cache keeps per token, over all layers: 2 * kv_heads * head_dim per layer, or MLA's
    compressed latent (kv_lora_rank + qk_rope_head_dim)."""
    cfg = ModelConfig.coerce(cfg)  # a ModelConfig, a Hydra node or a dict
    if cfg.mla is not None:
        per_layer = cfg.mla.kv_lora_rank + cfg.mla.qk_rope_head_dim
    else:
        per_layer = 2 * cfg.kv_heads * cfg.attn_head_dim
    return per_layer * cfg.n_layers
