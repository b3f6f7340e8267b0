"""Back-of-the-envelope sizing of a training run from the model config alone: parameters, FLOPs, memory, time.

Deciding a layout (how many GPUs, which sharding, whether activation checkpointing is needed) should not require
building the model, so everything here is closed-form arithmetic over `ModelConfig`; tests check it against our
model and against Hugging Face models built on the meta device. The launcher uses `flops_per_token` and
`peak_flops` for MFU.

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
  attention and one more pass through the output head. In memory they sit on the last pipeline stage.
- Memory per GPU (`estimate_memory`) is the worst pipeline stage under the layout:
  weights in `param_dtype`; gradients in `grad_dtype`; optimizer = AdamW's two moments in `optimizer_dtype` plus an
  fp32 master copy when `master_weights` and the weights are not fp32 (bf16 + fp32 AdamW = 2 + 2 + 12 = 16 bytes
  per parameter before sharding). ZeRO-1 shards the optimizer over dp, ZeRO-2 also gradients, ZeRO-3 and FSDP also
  weights, plus two unsharded layers in flight (the one computing and the one prefetched). Tensor parallelism
  divides every parameter except norms and routers; expert parallelism divides the routed experts (which then
  shard over dp / ep). Pipeline stages get contiguous, balanced runs of layers; the first also holds the input
  embeddings, the last the final norm and output projection (a tied output is a second copy there when pp > 1).
  Under tensor parallelism MLA's low-rank down-projections (wq_a, wkv_a) and latent norms stay replicated, as
  parallel/tensor.py lays them out.
- Activations are what autograd keeps per token (in `param_dtype`), assuming fused/flash attention (no T x T
  scores), sequence parallelism when tp > 1, 1F1B pipelining (the first stage holds pp micro-batches in flight),
  plus one chunk of fp32 logits and their gradient. Per layer and token, in elements:
    attention: 2*dim (norm input, norm output) + 2*q_dim + 2*kv_dim (q, k, v, attention output)
    MLA attention: 2*dim + the q path (q_lora_rank twice if low-rank, then n_heads*qk) + the kv path
      (kv_lora_rank + rope, kv_lora_rank normed, n_heads*(nope + v) up-projected) + n_heads*qk (keys) +
      2*n_heads*v (values, attention output)
    SwiGLU MLP: 2*dim + 3*hidden; GELU MLP: 2*dim + 2*hidden
    MoE: 2*dim + top_k*(dim + 3*expert_hidden) + 3*shared_hidden
    sandwich and branch-output norms add dim for each post-norm input.
  `activation_checkpointing=full` keeps only each layer's input (dim) plus one layer recomputed at a time;
  `selective` keeps matmul and attention outputs and recomputes norms and activation functions:
    attention: dim + 2*q_dim + 2*kv_dim + dim (MLA: dim + its projection outputs + attention output + dim);
    SwiGLU/GeGLU: 2*hidden + dim; GELU: hidden + dim;
    MoE: top_k*(2*expert_hidden + dim) + 2*shared_hidden + dim.
  Framework overheads (CUDA context, allocator fragmentation, communication buffers) are not included.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from model.config import AC_MODES, BRANCH_NORM_POSITIONS, ModelConfig
from model.dtypes import dtype_bytes

GIB = 1024**3

# Peak dense (no sparsity) bf16 tensor-core throughput in TFLOP/s, from the vendors' datasheets. Matched in order
# against a lower-cased device name (torch.cuda.get_device_name() or a short name such as "H100 SXM"), so more
# specific patterns come first.
_PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"gh200", 989.0),
    (r"h200", 989.0),
    (r"h100.*pcie", 756.0),
    (r"h100.*nvl", 835.0),
    (r"h100", 989.0),  # SXM5 / HBM3 (torch reports "NVIDIA H100 80GB HBM3")
    (r"h800", 989.0),
    (r"b200", 2250.0),
    (r"a100", 312.0),
    (r"a800", 312.0),
    (r"l40s", 362.0),
    (r"\bl4\b", 121.0),
    (r"\ba10\b", 125.0),
    (r"mi300x", 1307.0),
    (r"mi250x", 383.0),
)

def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device, or None when unknown (CPU, unlisted GPU): MFU is then undefined."""
    name = device_name.lower()
    for pattern, tflops in _PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops * 1e12
    return None


# ---------------------------------------------------------------------------------------------------------------
# Parameters


def _norm_params(cfg: ModelConfig, width: int) -> int:
    with_bias = cfg.norm_type == "layernorm" and cfg.norm_bias
    return width * (2 if with_bias else 1)


def _final_norm_params(cfg: ModelConfig) -> int:
    """Post-norm blocks already end in a norm, so the model has no final one."""
    return 0 if cfg.norm_position == "post" else _norm_params(cfg, cfg.dim)


def _ffn_params(cfg: ModelConfig, hidden: int, mlp_type: str, bias: bool) -> int:
    if mlp_type in ("swiglu", "geglu"):
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
        return (self.attention + self.attention_replicated + self.norms + self.ffn + self.router
                + self.experts_active)


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
    return LayerParams(attention, norms, ffn, router, moe.num_experts * per_expert, moe.top_k * per_expert,
                       replicated)


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


def mtp_module_params(cfg: ModelConfig, depth: int) -> tuple[int, int]:
    """(total, active) parameters of multi-token-prediction module `depth` (0-based): its three norms, the
    2*dim -> dim projection and its decoder layer (embedding and head are the model's)."""
    layer = layer_params(cfg, cfg.n_layers + depth)
    own = 3 * _norm_params(cfg, cfg.dim) + 2 * cfg.dim * cfg.dim
    return own + layer.total, own + layer.active


def parameter_counts(cfg: ModelConfig) -> ParameterCounts:
    cfg = ModelConfig.coerce(cfg)  # a ModelConfig, a Hydra node or a dict
    layers = [layer_params(cfg, i) for i in range(cfg.n_layers)]
    mtp = [mtp_module_params(cfg, k) for k in range(cfg.mtp_depth)]
    embedding = cfg.vocab_size * cfg.dim + (cfg.max_seq_len * cfg.dim if cfg.pos_embedding == "learned" else 0)
    output = cfg.vocab_size * cfg.dim
    outside = embedding + _final_norm_params(cfg) + (0 if cfg.tie_embeddings else output)
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


# ---------------------------------------------------------------------------------------------------------------
# Layout, memory and time


@dataclass
class EstimateConfig:
    """`configs/estimate.yaml`: the model (Hydra group `model`) plus the training layout to size."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dp: int = 1  # data-parallel degree (replicas or shards)
    tp: int = 1  # tensor parallel (with sequence parallelism)
    pp: int = 1  # pipeline stages (1F1B)
    cp: int = 1  # context parallel
    ep: int = 1  # expert parallel, borrowed from dp (must divide dp)
    zero_stage: int = 0  # 0 none, 1 optimizer, 2 + gradients, 3 + weights (sharded over dp)
    fsdp: bool = False  # FSDP full sharding over dp: weights, gradients and optimizer (like ZeRO-3)
    micro_batch_size: int = 1  # sequences per GPU per forward
    grad_accum: int = 1  # micro-batches per optimizer step (pipeline micro-batches when pp > 1)
    seq_len: Optional[int] = None  # None: model.max_seq_len
    activation_checkpointing: str = "none"  # none | selective | full
    param_dtype: str = "bf16"  # dtype of the weights used in compute (and of activations)
    grad_dtype: str = "bf16"
    optimizer_dtype: str = "fp32"  # AdamW moments
    master_weights: bool = True  # an fp32 master copy in the optimizer when param_dtype is not fp32
    gpu: str = "H100 SXM"  # name for peak_flops(); an unknown name gives no time estimate
    tokens: Optional[float] = None  # token budget; None: 20 tokens per parameter (Chinchilla)
    mfu: float = 0.4  # model FLOPs utilisation assumed for the time estimate
    format: str = "table"  # table | json

    @property
    def num_gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp


def _dtype_bytes(key: str, value: str) -> int:
    return dtype_bytes(value, key)


def validate_layout(est: EstimateConfig) -> None:
    """Raise ValueError naming the key and the fix."""
    cfg = est.model
    for key in ("dp", "tp", "pp", "cp", "ep", "micro_batch_size", "grad_accum"):
        if getattr(est, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(est, key)}")
    if est.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage={est.zero_stage} must be 0, 1, 2 or 3")
    if est.fsdp and est.zero_stage:
        raise ValueError("fsdp=true and zero_stage>0 are two engines for the same sharding: set one of them")
    if cfg.n_heads % est.tp or cfg.kv_heads % est.tp:
        raise ValueError(
            f"tp={est.tp} must divide model.n_heads={cfg.n_heads} and model.n_kv_heads={cfg.kv_heads}"
        )
    if est.pp > cfg.n_layers:
        raise ValueError(f"pp={est.pp} is more stages than model.n_layers={cfg.n_layers}")
    moe = cfg.moe
    if est.ep > 1:
        if moe is None:
            raise ValueError("ep > 1 needs an MoE model (model.moe is null)")
        if est.dp % est.ep or moe.num_experts % est.ep:
            raise ValueError(f"ep={est.ep} must divide dp={est.dp} and model.moe.num_experts={moe.num_experts}")
    seq_len = resolved_seq_len(est)
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds model.max_seq_len={cfg.max_seq_len}")
    if seq_len % est.cp:
        raise ValueError(f"cp={est.cp} must divide seq_len={seq_len}")
    if est.activation_checkpointing not in AC_MODES:
        raise ValueError(f"activation_checkpointing={est.activation_checkpointing!r} is not one of {list(AC_MODES)}")
    for key in ("param_dtype", "grad_dtype", "optimizer_dtype"):
        _dtype_bytes(key, getattr(est, key))
    if not 0 < est.mfu <= 1:
        raise ValueError(f"mfu={est.mfu} must be in (0, 1]")
    if est.tokens is not None and est.tokens <= 0:
        raise ValueError(f"tokens={est.tokens} must be positive (or null for 20 tokens per parameter)")
    if est.format not in ("table", "json"):
        raise ValueError(f"format={est.format!r} is not one of table|json")


def resolved_seq_len(est: EstimateConfig) -> int:
    return est.seq_len if est.seq_len is not None else est.model.max_seq_len


def stage_layers(n_layers: int, pp: int) -> list[range]:
    """Contiguous balanced layer ranges, earlier stages taking the remainder."""
    base, extra = divmod(n_layers, pp)
    ranges, start = [], 0
    for stage in range(pp):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


@dataclass
class StageParams:
    """Parameters one GPU of a stage holds before data-parallel sharding, split by how dp shards them."""

    dense: float  # sharded over dp by ZeRO/FSDP
    experts: float  # routed experts: sharded over dp / ep
    largest_layer: float  # one layer's parameters on this GPU (for the FSDP/ZeRO-3 gather)


def stage_params(est: EstimateConfig, stage: int) -> StageParams:
    cfg, tp = est.model, est.tp
    layers = list(stage_layers(cfg.n_layers, est.pp)[stage])
    last = stage == est.pp - 1
    if last:  # the MTP modules' layers
        layers += range(cfg.n_layers, cfg.n_layers + cfg.mtp_depth)
    dense = experts = largest = 0.0
    for i in layers:
        p = layer_params(cfg, i)
        layer_dense = (p.attention + p.ffn) / tp + p.attention_replicated + p.norms + p.router
        layer_experts = p.experts / (tp * est.ep)
        dense += layer_dense
        experts += layer_experts
        largest = max(largest, layer_dense + layer_experts)  # FSDP gathers only the ep-local experts
    if stage == 0:
        dense += parameter_counts(cfg).embedding / tp
    if last:
        dense += _final_norm_params(cfg) + cfg.mtp_depth * (3 * _norm_params(cfg, cfg.dim) + 2 * cfg.dim * cfg.dim)
        if not cfg.tie_embeddings or est.pp > 1:
            dense += cfg.vocab_size * cfg.dim / tp
    return StageParams(dense, experts, largest)


def _attention_activations(cfg: ModelConfig, mode: str) -> int:
    d = cfg.dim
    if cfg.mla is None:
        q_dim, kv_dim = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
        return d + 2 * q_dim + 2 * kv_dim + d if mode == "selective" else 2 * d + 2 * q_dim + 2 * kv_dim
    mla, heads = cfg.mla, cfg.n_heads
    q_path = heads * mla.qk_head_dim + (mla.q_lora_rank or 0)
    kv_path = mla.kv_lora_rank + mla.qk_rope_head_dim + heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    if mode == "selective":  # projection outputs and the attention output
        return d + q_path + kv_path + heads * mla.v_head_dim + d
    return (2 * d + q_path + (mla.q_lora_rank or 0) + kv_path + mla.kv_lora_rank + heads * mla.qk_head_dim
            + 2 * heads * mla.v_head_dim)


def _activation_elements_per_token(cfg: ModelConfig, layer_idx: int, mode: str) -> int:
    """Elements autograd keeps per token for one layer (see the module docstring)."""
    d = cfg.dim
    moe = cfg.moe
    is_moe = moe is not None and cfg.is_moe_layer(layer_idx)
    gated = cfg.mlp_type in ("swiglu", "geglu")
    if mode == "full":
        return d
    attn = _attention_activations(cfg, mode)
    if mode == "selective":
        if is_moe:
            mlp = moe.top_k * (2 * cfg.expert_hidden_dim + d) + 2 * cfg.shared_experts_hidden_dim + d
        elif gated:
            mlp = 2 * cfg.ffn_hidden_dim + d
        else:
            mlp = cfg.ffn_hidden_dim + d
        return attn + mlp
    if is_moe:
        mlp = 2 * d + moe.top_k * (d + 3 * cfg.expert_hidden_dim) + 3 * cfg.shared_experts_hidden_dim
    elif gated:
        mlp = 2 * d + 3 * cfg.ffn_hidden_dim
    else:
        mlp = 2 * d + 2 * cfg.ffn_hidden_dim
    post_norms = 2 * d if cfg.norm_position in BRANCH_NORM_POSITIONS else 0
    return attn + mlp + post_norms


def activation_bytes(est: EstimateConfig, stage: int) -> float:
    cfg = est.model
    act_bytes = _dtype_bytes("param_dtype", est.param_dtype)
    tokens = est.micro_batch_size * resolved_seq_len(est) / est.cp / est.tp
    in_flight = est.pp - stage  # 1F1B: stage s holds pp - s micro-batches
    layers = stage_layers(cfg.n_layers, est.pp)[stage]
    mode = est.activation_checkpointing
    kept = sum(_activation_elements_per_token(cfg, i, mode) for i in layers) * in_flight
    if stage == est.pp - 1:  # MTP modules (never checkpointed): two normed inputs, their concat, the layer
        mtp = range(cfg.n_layers, cfg.n_layers + cfg.mtp_depth)
        kept += sum(6 * cfg.dim + _activation_elements_per_token(cfg, i, "none") for i in mtp) * in_flight
    if mode == "full" and len(layers):  # one layer recomputed at a time during backward
        kept += max(_activation_elements_per_token(cfg, i, "none") for i in layers)
    total = kept * tokens * act_bytes
    if stage == est.pp - 1:  # one chunk of fp32 logits and their gradient (the loss chunks are recomputed)
        chunk = min(est.micro_batch_size * resolved_seq_len(est) / est.cp, cfg.loss_chunk_size)
        total += 2 * chunk * cfg.vocab_size / est.tp * 4
    return total


@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def gib(self) -> dict[str, float]:
        values = {**asdict(self), "total": self.total}
        return {key: round(value / GIB, 3) for key, value in values.items()}


def stage_memory(est: EstimateConfig, stage: int) -> MemoryEstimate:
    p = stage_params(est, stage)
    dp, ep = est.dp, est.ep
    shard_optimizer = est.fsdp or est.zero_stage >= 1
    shard_grads = est.fsdp or est.zero_stage >= 2
    shard_weights = est.fsdp or est.zero_stage >= 3

    def sharded(flag: bool) -> float:
        return p.dense / dp + p.experts / (dp // ep) if flag else p.dense + p.experts

    w_bytes = _dtype_bytes("param_dtype", est.param_dtype)
    weights = sharded(shard_weights) * w_bytes
    if shard_weights and dp > 1:
        weights += 2 * p.largest_layer * w_bytes  # the gathered layer and the prefetched next one
    gradients = sharded(shard_grads) * _dtype_bytes("grad_dtype", est.grad_dtype)
    master = 4 if est.master_weights and w_bytes != 4 else 0
    optimizer = sharded(shard_optimizer) * (master + 2 * _dtype_bytes("optimizer_dtype", est.optimizer_dtype))
    return MemoryEstimate(weights, gradients, optimizer, activation_bytes(est, stage))


def estimate_memory(est: EstimateConfig) -> MemoryEstimate:
    """Bytes per GPU on the pipeline stage with the largest total."""
    return max((stage_memory(est, s) for s in range(est.pp)), key=lambda m: m.total)


def estimate(est: EstimateConfig) -> dict[str, Any]:
    """The full report as a JSON-serialisable dict."""
    validate_layout(est)
    cfg = est.model
    seq_len = resolved_seq_len(est)
    counts = parameter_counts(cfg)
    fpt = flops_per_token(cfg, seq_len)
    tokens = est.tokens if est.tokens is not None else 20.0 * counts.total
    peak = peak_flops(est.gpu)
    report: dict[str, Any] = {
        "model": cfg.name,
        "params_total": counts.total,
        "params_active": counts.active,
        "params_embedding": counts.embedding,
        "params_flops": counts.flops_params,
        "seq_len": seq_len,
        "train_flops_per_token": fpt,
        "kv_cache_bytes_per_token": kv_cache_elements_per_token(cfg) * _dtype_bytes("param_dtype", est.param_dtype),
        "layout": {
            "num_gpus": est.num_gpus,
            "dp": est.dp, "tp": est.tp, "pp": est.pp, "cp": est.cp, "ep": est.ep,
            "sharding": "fsdp" if est.fsdp else f"zero{est.zero_stage}" if est.zero_stage else "none",
            "micro_batch_size": est.micro_batch_size,
            "global_batch_tokens": est.micro_batch_size * est.grad_accum * est.dp * seq_len,
            "activation_checkpointing": est.activation_checkpointing,
        },
        "memory_per_gpu_gib": estimate_memory(est).gib(),
        "tokens": tokens,
        "train_flops_total": fpt * tokens,
        "gpu": est.gpu,
        "peak_flops_per_gpu": peak,
        "mfu": est.mfu,
    }
    if peak is None:
        report.update(tokens_per_second=None, time_to_train_hours=None, gpu_hours=None)
    else:
        throughput = est.num_gpus * peak * est.mfu  # achieved model FLOP/s of the whole job
        seconds = fpt * tokens / throughput
        report.update(
            tokens_per_second=throughput / fpt,
            time_to_train_hours=seconds / 3600,
            gpu_hours=seconds / 3600 * est.num_gpus,
        )
    return report


def _human(n: float) -> str:
    if abs(n) >= 1e15:
        return f"{n:.3g}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def format_table(report: dict[str, Any]) -> str:
    lay, mem = report["layout"], report["memory_per_gpu_gib"]
    rows = [
        ("model", report["model"]),
        ("parameters (total / active / embedding)",
         f"{report['params_total']:,} / {report['params_active']:,} / {report['params_embedding']:,}"),
        ("train FLOPs per token", f"{_human(report['train_flops_per_token'])} at seq_len {report['seq_len']}"),
        ("layout", f"{lay['num_gpus']} GPUs = dp {lay['dp']} x tp {lay['tp']} x pp {lay['pp']} x cp {lay['cp']}"
                   f" (ep {lay['ep']}), sharding {lay['sharding']}, AC {lay['activation_checkpointing']}"),
        ("batch", f"micro {lay['micro_batch_size']}, global {lay['global_batch_tokens']:,} tokens"),
    ]
    rows += [(f"memory/GPU {key} (GiB)", f"{mem[key]:.2f}")
             for key in ("weights", "gradients", "optimizer", "activations", "total")]
    rows.append(("token budget", f"{_human(report['tokens'])} tokens, {_human(report['train_flops_total'])} FLOPs"))
    if report["time_to_train_hours"] is None:
        rows.append(("time to train", f"unknown: no peak FLOP/s for gpu={report['gpu']!r}"))
    else:
        hours = report["time_to_train_hours"]
        rows.append(("time to train", f"{hours:,.1f} h ({hours / 24:,.1f} days) on {lay['num_gpus']} x "
                                      f"{report['gpu']} at MFU {report['mfu']:.0%}; {report['gpu_hours']:,.0f} GPU-hours"))
        rows.append(("throughput", f"{report['tokens_per_second']:,.0f} tokens/s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="estimate_schema", node=EstimateConfig)


def main() -> None:
    import hydra
    from omegaconf import OmegaConf

    _register_schema()

    @hydra.main(config_path="../configs", config_name="estimate", version_base=None)
    def _run(dict_cfg) -> None:
        try:
            est = OmegaConf.to_object(dict_cfg)
            report = estimate(est)
        except ValueError as exc:  # a bad key value: say which, without a traceback
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps(report, indent=2) if est.format == "json" else format_table(report))

    _run()


if __name__ == "__main__":
    main()
