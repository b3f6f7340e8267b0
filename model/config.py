"""Typed model configuration.

Every architecture Loom trains is one of these dataclasses filled from `configs/model/*.yaml`, so adding a model
is a config file, not code. The dataclasses double as Hydra structured configs: a misspelt key or a wrong type
fails when the config is composed, before any work.

`ModelConfig.coerce(obj)` is the one way in from anything else (a Hydra/OmegaConf node, a plain dict such as a
checkpoint's model_config.json, or a ModelConfig): nested sections become their dataclasses, unknown keys at any
level are refused with the valid ones listed, and the whole config is validated once. Values that follow from
others (expert widths, the softmax scale, YaRN's attention factor, which layers slide) are properties here, so
every consumer (model, estimator, HF conversion, parallel plans) derives them the same way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

ROPE_TYPES = ("none", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope")


@dataclass
class RopeScalingConfig:
    """Long-context RoPE frequency scaling. `type="none"` (or factor 1) is plain RoPE.

    - linear: position interpolation (positions divided by `factor`).
    - ntk: static NTK-aware scaling of the base (theta * factor ** (d / (d - 2))).
    - dynamic: dynamic NTK (transformers' "dynamic"): for a forward whose largest position p reaches past
      `original_max_seq_len`, the base becomes theta * (factor * (p + 1) / original - (factor - 1)) ** (d / (d - 2)).
    - yarn: NTK-by-parts interpolation with ramp between `beta_fast`/`beta_slow` and attention temperature.
    - llama3: Llama-3.1 frequency-dependent scaling with `low_freq_factor`/`high_freq_factor`.
    - longrope: Phi-3's per-frequency rescaling: `short_factor` while the largest position of a forward is below
      `original_max_seq_len`, `long_factor` beyond it; cos and sin scaled by `attention_factor`.
    """

    type: str = "none"  # none | linear | ntk | dynamic | yarn | llama3 | longrope
    factor: float = 1.0
    original_max_seq_len: int = 8192
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float = 1.0  # yarn attention-temperature multiplier (0.1 * mscale * ln(factor) + 1)
    # yarn (DeepSeek): the softmax scale is multiplied by (0.1 * mscale_all_dim * ln(factor) + 1) ** 2; 0: off
    mscale_all_dim: float = 0.0
    long_factor: Optional[list[float]] = None  # longrope: one divisor per frequency (head_dim / 2 values)
    short_factor: Optional[list[float]] = None  # longrope
    attention_factor: Optional[float] = None  # yarn/longrope: cos/sin multiplier; None: the method's own rule

    @property
    def is_plain(self) -> bool:
        return self.type == "none" or (self.factor == 1.0 and self.type in ("linear", "ntk", "dynamic", "llama3"))

    @property
    def cos_sin_factor(self) -> float:
        """What cos and sin are multiplied by (YaRN's and LongRoPE's attention temperature); 1 otherwise."""
        if self.attention_factor is not None and self.type in ("yarn", "longrope"):
            return float(self.attention_factor)
        if self.type == "yarn":
            return 0.1 * self.mscale * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0
        if self.type == "longrope":
            if self.factor <= 1:
                return 1.0
            return math.sqrt(1 + math.log(self.factor) / math.log(self.original_max_seq_len))
        return 1.0

    @property
    def softmax_scale_factor(self) -> float:
        """Multiplier of the attention softmax scale (DeepSeek's YaRN `mscale_all_dim`); 1 otherwise."""
        if self.type != "yarn" or not self.mscale_all_dim or self.factor <= 1:
            return 1.0
        m = 0.1 * self.mscale_all_dim * math.log(self.factor) + 1.0
        return m * m

    @property
    def depends_on_length(self) -> bool:
        """True when the frequencies of a forward depend on its largest position (dynamic NTK, LongRoPE)."""
        return self.type in ("dynamic", "longrope") and not self.is_plain


@dataclass
class MLAConfig:
    """DeepSeek multi-head latent attention: keys and values are up-projected from a small shared latent (what the
    KV cache holds), and a separate `qk_rope_head_dim`-wide part carries the rotary positions."""

    kv_lora_rank: int = 512  # width of the compressed key/value latent
    q_lora_rank: Optional[int] = None  # None: full-rank query projection (DeepSeek-V2-Lite); else low-rank + norm
    qk_nope_head_dim: int = 128  # per-head query/key width without positions
    qk_rope_head_dim: int = 64  # per-head query/key width with RoPE (the key part shared by all heads)
    v_head_dim: int = 128

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass
class MoEConfig:
    """Mixture-of-experts feed-forward. Replaces the dense MLP in the layers selected by `every`/`first_dense`."""

    num_experts: int = 8
    top_k: int = 2
    num_shared_experts: int = 0  # DeepSeek-style experts every token goes through
    expert_hidden_dim: Optional[int] = None  # None: same sizing rule as the dense MLP
    shared_expert_hidden_dim: Optional[int] = None  # None: expert_hidden_dim
    shared_expert_gate: bool = False  # Qwen2-MoE: shared experts' output times sigmoid(gate(x))
    aux_loss_weight: float = 0.01  # Switch load balancing: num_experts * sum_i f_i * P_i
    router_z_loss_weight: float = 0.001
    score_func: str = "softmax"  # softmax (Mixtral, Qwen, DeepSeek-V2) | sigmoid (DeepSeek-V3)
    norm_topk_prob: bool = True  # renormalise the top-k router scores to sum to 1 (Mixtral)
    routed_scaling_factor: float = 1.0  # routed experts' weights multiplied by this (DeepSeek)
    n_groups: int = 1  # grouped top-k: experts split into n_groups, tokens pick among the best topk_groups
    topk_groups: int = 1
    group_score: str = "max"  # a group's score: max (DeepSeek-V2) | top2_sum (DeepSeek-V3) of its experts' scores
    # Auxiliary-loss-free balancing (DeepSeek-V3): a per-expert bias added to the scores when choosing experts
    # (not to the weights); after each optimizer step it moves by bias_update_rate * sign(mean load - load).
    expert_bias: bool = False
    bias_update_rate: float = 0.001
    every: int = 1  # MoE in every `every`-th layer
    first_dense: int = 0  # the first `first_dense` layers stay dense (DeepSeek)


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # projections model.lora.targets may name (model/lora.py)


@dataclass
class LoRAConfig:
    """Low-rank adapters (LoRA, Hu et al. 2021, as peft computes them) on the chosen projections: y = W x + (alpha /
    rank) * B A dropout(x), with W frozen and only A [rank, in] and B [out, rank] trained. rank 0: no adapters."""

    rank: int = 0  # adapter rank r; 0: off (the whole model trains)
    alpha: float = 16.0  # scale = alpha / rank, as peft's lora_alpha
    dropout: float = 0.0  # dropout on the adapter's input (peft's lora_dropout)
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])  # of LORA_TARGETS
    base_dtype: str = "fp32"  # fp32 | bf16 | fp16: what the adapted projections' frozen weights are held in

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass
class ModelConfig:
    name: str = "custom"  # the model's name (configs/model/<name>.yaml)
    vocab_size: int = 2048
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: = n_heads (MHA); 1: MQA; in between: GQA
    head_dim: Optional[int] = None  # None: dim // n_heads
    max_seq_len: int = 256

    # Normalisation
    norm_type: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorm bias (GPT-2: true)
    rmsnorm_unit_offset: bool = False  # Gemma: RMSNorm scales by (1 + weight), weight initialised at 0
    # pre (Llama) | post (original Transformer) | sandwich (Gemma 2/3: pre and post) | branch_output (OLMo 2: a
    # norm on each branch's output before the residual add, none on its input)
    norm_position: str = "pre"

    # Positions
    pos_embedding: str = "rope"  # rope | alibi | learned | none
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    local_rope_theta: Optional[float] = None  # Gemma 3: RoPE base of the sliding-window layers (unscaled)

    # Attention
    qkv_bias: bool = False  # MLA: biases of the down-projections wq_a and wkv_a
    attn_out_bias: bool = False
    qk_norm: bool = False
    qk_norm_scope: str = "head"  # head: RMSNorm over each head (Qwen3, Gemma 3) | full: over all heads (OLMo 2)
    query_pre_attn_scalar: Optional[float] = None  # softmax scale = this ** -0.5 (Gemma); None: head dim
    attn_logit_softcap: Optional[float] = None
    sliding_window: Optional[int] = None  # tokens a query may look back (Mistral: 4096); None: full causal
    # With a sliding window: None, every layer slides; k, layer i attends globally when (i + 1) % k == 0
    # (Gemma 2: 2, Gemma 3: 6)
    sliding_window_pattern: Optional[int] = None
    mla: Optional[MLAConfig] = None  # DeepSeek multi-head latent attention instead of MHA/GQA

    # MLP
    mlp_type: str = "swiglu"  # swiglu | geglu (Gemma: tanh-GELU gate) | gelu
    hidden_dim: Optional[int] = None  # explicit FFN width; None: derived from the rule below
    ffn_dim_multiplier: Optional[float] = None  # Llama sizing: int(2*4*dim/3 * mult) rounded up to multiple_of
    multiple_of: int = 256
    mlp_bias: bool = False

    # Embeddings and output
    scale_embeddings: bool = False  # Gemma: token embeddings multiplied by sqrt(dim)
    tie_embeddings: bool = False
    final_logit_softcap: Optional[float] = None
    z_loss_weight: float = 0.0  # PaLM z-loss on the log-partition of the output logits
    # Multi-token prediction (DeepSeek-V3): this many extra modules after the last layer, module k predicting the
    # token k places beyond the next one; they share the embeddings and output head and are used in training only.
    mtp_depth: int = 0
    mtp_loss_weight: float = 0.3  # loss = next-token loss + this * the mean of the modules' losses (DeepSeek: 0.3)

    moe: Optional[MoEConfig] = None

    init_std: float = 0.02
    loss_chunk_size: int = 4096  # tokens per chunk when computing the loss, bounding fp32 logits memory

    # Speed options: the same model and numbers (to float rounding) computed another way; off until a GPU run shows
    # they pay (benchmarks/gpu_check.py measures each).
    fused_projections: bool = False  # q/k/v and gate/up each as one matmul (the weights stay separate parameters)
    attention_backend: str = "sdpa"  # ATTENTION_BACKENDS: sdpa | flex (FlexAttention block masks; CUDA training)
    # Token id ending each packed document (the shards' eos_id): attention never crosses it; None: it does
    document_mask_eos_id: Optional[int] = None
    vocab_multiple: int = 1  # output-head logits over the vocabulary padded to a multiple of this (e.g. 128)
    # The Hugging Face model_type this model came from (set by import; export writes it again when the
    # architecture still fits it). None: export picks the architecture from the config.
    hf_model_type: Optional[str] = None
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # adapters on frozen weights (model/lora.py); rank 0: off

    def __post_init__(self) -> None:
        # Plain-dict sections (a checkpoint's JSON, `ModelConfig(moe={...})`) become their dataclasses here, so
        # every consumer sees one type; then the whole config is checked once.
        self.rope_scaling = _section(RopeScalingConfig, self.rope_scaling, "model.rope_scaling")
        if self.moe is not None:
            self.moe = _section(MoEConfig, self.moe, "model.moe")
        if self.mla is not None:
            self.mla = _section(MLAConfig, self.mla, "model.mla")
        self.lora = _section(LoRAConfig, self.lora, "model.lora")
        validate_model_config(self)

    @classmethod
    def coerce(cls, obj: Any, *, source: str = "model") -> "ModelConfig":
        """A validated ModelConfig from a ModelConfig, an OmegaConf/Hydra node or a plain dict (nested sections as
        dicts or dataclasses). Unknown keys are refused with the valid ones named; `source` prefixes errors."""
        if isinstance(obj, cls):
            validate_model_config(obj)  # a dataclass may have been edited in place since it was built
            return obj
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(obj, DictConfig):
                obj = OmegaConf.to_container(obj, resolve=True)
        except ImportError:  # omegaconf is a dependency, but plain-dict callers do not need it
            pass
        if isinstance(obj, dict):
            return _section(cls, obj, source)
        raise TypeError(f"{source}: expected a ModelConfig (or a dict / DictConfig of one), got {type(obj).__name__}")

    # ------------------------------------------------------------------ derived values
    @property
    def padded_vocab_size(self) -> int:
        """Columns of the output head's matmul: vocab_size rounded up to vocab_multiple (the extra logits are masked;
        parameters, checkpoints and exports keep vocab_size rows)."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    @property
    def kv_heads(self) -> int:
        if self.mla is not None:
            return self.n_heads  # every head has its own up-projected key and value
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def attn_head_dim(self) -> int:
        """Query/key width per head (MLA: nope + rope part)."""
        if self.mla is not None:
            return self.mla.qk_head_dim
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def v_head_dim(self) -> int:
        return self.mla.v_head_dim if self.mla is not None else self.attn_head_dim

    @property
    def rope_dim(self) -> int:
        """Width RoPE rotates per head: the decoupled rope part under MLA, else the whole head."""
        return self.mla.qk_rope_head_dim if self.mla is not None else self.attn_head_dim

    @property
    def softmax_scale(self) -> float:
        """Scale of q.k before the softmax: query_pre_attn_scalar ** -0.5 (Gemma) or head_dim ** -0.5, times
        DeepSeek-YaRN's mscale_all_dim correction."""
        base = self.query_pre_attn_scalar if self.query_pre_attn_scalar is not None else self.attn_head_dim
        return base**-0.5 * self.rope_scaling.softmax_scale_factor

    @property
    def ffn_hidden_dim(self) -> int:
        """FFN width: explicit `hidden_dim`, else GPT-2's 4*dim for GELU, else Llama's SwiGLU rule."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        if self.mlp_type == "gelu":
            return 4 * self.dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def expert_hidden_dim(self) -> int:
        """Width of one routed expert (MoEConfig.expert_hidden_dim, else the dense FFN width)."""
        if self.moe is None or self.moe.expert_hidden_dim is None:
            return self.ffn_hidden_dim
        return self.moe.expert_hidden_dim

    @property
    def shared_experts_hidden_dim(self) -> int:
        """Width of the shared experts, run as one FFN of num_shared_experts x per-expert width (0: none)."""
        if self.moe is None or self.moe.num_shared_experts == 0:
            return 0
        per_expert = self.moe.shared_expert_hidden_dim
        return self.moe.num_shared_experts * (per_expert if per_expert is not None else self.expert_hidden_dim)

    def is_moe_layer(self, layer_idx: int) -> bool:
        if self.moe is None or layer_idx < self.moe.first_dense:
            return False
        return (layer_idx - self.moe.first_dense) % self.moe.every == 0

    def layer_window(self, layer_idx: int) -> Optional[int]:
        """The sliding window of layer `layer_idx`, or None when it attends to the whole causal context."""
        if self.sliding_window is None:
            return None
        pattern = self.sliding_window_pattern
        if pattern is not None and (layer_idx + 1) % pattern == 0:
            return None
        return self.sliding_window

    def uses_local_rope(self, layer_idx: int) -> bool:
        """Gemma 3: sliding layers rotate with their own base (`local_rope_theta`, no scaling)."""
        return self.local_rope_theta is not None and self.layer_window(layer_idx) is not None


NORM_TYPES = ("rmsnorm", "layernorm")
BRANCH_NORM_POSITIONS = ("sandwich", "branch_output")  # a norm on each branch's output (Gemma 2/3, OLMo 2)
NORM_POSITIONS = ("pre", "post", *BRANCH_NORM_POSITIONS)
POS_EMBEDDINGS = ("rope", "alibi", "learned", "none")
# Position encodings defined up to model.max_seq_len only (a table, or RoPE's scaled frequencies); ALiBi and
# none have no such bound.
MAX_SEQ_LEN_BOUNDED = ("rope", "learned")
GATED_MLP_TYPES = ("swiglu", "geglu")  # three matrices: gate, up, down
MLP_TYPES = (*GATED_MLP_TYPES, "gelu")
QK_NORM_SCOPES = ("head", "full")
ATTENTION_BACKENDS = ("sdpa", "flex")
# Activation checkpointing modes: parallel applies them, the estimator sizes their memory (model/ is the lower layer).
AC_MODES = ("none", "selective", "full")

_CHOICES = {
    "norm_type": NORM_TYPES,
    "norm_position": NORM_POSITIONS,
    "pos_embedding": POS_EMBEDDINGS,
    "mlp_type": MLP_TYPES,
    "qk_norm_scope": QK_NORM_SCOPES,
    "attention_backend": ATTENTION_BACKENDS,
}
_MOE_CHOICES = {"score_func": ("softmax", "sigmoid"), "group_score": ("max", "top2_sum")}


def _section(cls, value: Any, where: str):
    """A dataclass `cls` from an instance of it or a dict (unknown keys refused, naming the valid ones)."""
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(value, DictConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except ImportError:
            pass
    if not isinstance(value, dict):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return cls(**value)


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the key and the fix; run when a ModelConfig is built (and by coerce)."""
    for key, allowed in _CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ValueError(f"model.{key}={value!r} is not one of {list(allowed)}")
    scaling = cfg.rope_scaling
    if scaling.type not in ROPE_TYPES:
        raise ValueError(f"model.rope_scaling.type={scaling.type!r} is not one of {'|'.join(ROPE_TYPES)}")
    for key in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"model.{key} must be positive, got {getattr(cfg, key)}")
    if cfg.head_dim is None and cfg.mla is None and cfg.dim % cfg.n_heads != 0:
        raise ValueError(
            f"model.dim={cfg.dim} is not divisible by model.n_heads={cfg.n_heads}: change one, or set model.head_dim"
        )
    if cfg.n_heads % cfg.kv_heads != 0:
        raise ValueError(
            f"model.n_heads={cfg.n_heads} must be a multiple of model.n_kv_heads={cfg.kv_heads} (GQA groups)"
        )
    if cfg.pos_embedding == "rope" and cfg.rope_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, got {cfg.rope_dim}")
    _validate_rope(cfg)
    if cfg.sliding_window is not None and cfg.sliding_window <= 0:
        raise ValueError(f"model.sliding_window must be positive or null, got {cfg.sliding_window}")
    if cfg.sliding_window_pattern is not None:
        if cfg.sliding_window_pattern < 1:
            raise ValueError(f"model.sliding_window_pattern must be >= 1 or null, got {cfg.sliding_window_pattern}")
        if cfg.sliding_window is None:
            raise ValueError("model.sliding_window_pattern needs model.sliding_window: set both, or neither")
    if cfg.local_rope_theta is not None and (cfg.sliding_window is None or cfg.pos_embedding != "rope"):
        raise ValueError(
            "model.local_rope_theta is the RoPE base of sliding-window layers: it needs "
            "pos_embedding=rope and a sliding_window"
        )
    if cfg.query_pre_attn_scalar is not None and cfg.query_pre_attn_scalar <= 0:
        raise ValueError(f"model.query_pre_attn_scalar must be positive, got {cfg.query_pre_attn_scalar}")
    if cfg.rmsnorm_unit_offset and cfg.norm_type != "rmsnorm":
        raise ValueError("model.rmsnorm_unit_offset needs norm_type=rmsnorm")
    _validate_speed_options(cfg)
    if cfg.mtp_depth < 0 or cfg.mtp_loss_weight < 0:
        raise ValueError(
            f"model.mtp_depth ({cfg.mtp_depth}) and model.mtp_loss_weight ({cfg.mtp_loss_weight}) "
            "must be >= 0 (mtp_depth=0: no multi-token prediction)"
        )
    if cfg.mla is not None:
        _validate_mla(cfg)
    if cfg.moe is not None:
        _validate_moe(cfg.moe)
    _validate_lora(cfg)


def _validate_lora(cfg: ModelConfig) -> None:
    """The adapters' own values; model/lora.py refuses targets the architecture does not have."""
    lora = cfg.lora
    if lora.rank < 0 or lora.alpha <= 0 or not 0 <= lora.dropout < 1:
        raise ValueError(
            f"model.lora: rank ({lora.rank}) must be >= 0 (0: off), alpha ({lora.alpha}) > 0 and dropout "
            f"({lora.dropout}) in [0, 1)"
        )
    from model.dtypes import canonical_precision

    lora.base_dtype = canonical_precision(lora.base_dtype, "model.lora.base_dtype")
    if not lora.enabled:
        return
    unknown = [t for t in lora.targets if t not in LORA_TARGETS]
    if unknown or not lora.targets or len(set(lora.targets)) != len(lora.targets):
        raise ValueError(
            f"model.lora.targets={list(lora.targets)}: name each of {list(LORA_TARGETS)} at most once, at least one"
            + (f" ({unknown} are not projections)" if unknown else "")
        )
    if cfg.fused_projections:
        raise ValueError(
            "model.lora with model.fused_projections=true: the fused matmul bypasses the adapters; set "
            "model.fused_projections=false"
        )


def _validate_speed_options(cfg: ModelConfig) -> None:
    if cfg.vocab_multiple < 1:
        raise ValueError(f"model.vocab_multiple must be >= 1 (1: no padding), got {cfg.vocab_multiple}")
    eos = cfg.document_mask_eos_id
    if eos is not None and not 0 <= eos < cfg.vocab_size:
        raise ValueError(f"model.document_mask_eos_id={eos} is not a token id of model.vocab_size={cfg.vocab_size}")
    # Latent attention and ALiBi take their masks and biases per layer (model/blocks/mla.py, alibi.py).
    if cfg.mla is not None and (eos is not None or cfg.attention_backend != "sdpa"):
        raise ValueError(
            "model.mla (latent attention) supports neither model.document_mask_eos_id nor "
            "model.attention_backend=flex: leave them at null and sdpa"
        )
    if cfg.pos_embedding == "alibi" and cfg.attention_backend != "sdpa":
        raise ValueError(
            "model.attention_backend=flex does not carry ALiBi's bias: use attention_backend=sdpa, or "
            "pos_embedding=rope"
        )


def _validate_rope(cfg: ModelConfig) -> None:
    s = cfg.rope_scaling
    if s.type in ("dynamic", "longrope", "yarn", "llama3") and s.original_max_seq_len <= 0:
        raise ValueError(f"model.rope_scaling.original_max_seq_len must be positive, got {s.original_max_seq_len}")
    if s.type == "longrope":
        half = cfg.rope_dim // 2
        for key in ("long_factor", "short_factor"):
            values = getattr(s, key)
            if values is None or len(values) != half:
                raise ValueError(
                    f"model.rope_scaling.{key} needs {half} values (one per rotary frequency, head dim "
                    f"{cfg.rope_dim} / 2), got {None if values is None else len(values)}"
                )
    if s.factor <= 0:
        raise ValueError(f"model.rope_scaling.factor must be positive, got {s.factor}")


def _validate_mla(cfg: ModelConfig) -> None:
    mla = cfg.mla
    for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if getattr(mla, key) <= 0:
            raise ValueError(f"model.mla.{key} must be positive, got {getattr(mla, key)}")
    if mla.q_lora_rank is not None and mla.q_lora_rank <= 0:
        raise ValueError(f"model.mla.q_lora_rank must be positive or null, got {mla.q_lora_rank}")
    if cfg.pos_embedding not in ("rope", "none"):
        raise ValueError(f"model.mla (latent attention) works with pos_embedding=rope or none, got {cfg.pos_embedding}")
    if cfg.qk_norm:
        raise ValueError("model.mla normalises its latents itself: set model.qk_norm false")
    if cfg.n_kv_heads is not None and cfg.n_kv_heads != cfg.n_heads:
        raise ValueError("model.mla: every head has its own key and value; leave model.n_kv_heads null")


def _validate_moe(moe: MoEConfig) -> None:
    for key, allowed in _MOE_CHOICES.items():
        if getattr(moe, key) not in allowed:
            raise ValueError(f"model.moe.{key}={getattr(moe, key)!r} is not one of {list(allowed)}")
    if not 1 <= moe.top_k <= moe.num_experts:
        raise ValueError(f"model.moe.top_k={moe.top_k} must be between 1 and model.moe.num_experts={moe.num_experts}")
    if moe.every < 1 or moe.first_dense < 0:
        raise ValueError(f"model.moe.every={moe.every} must be >= 1 and first_dense={moe.first_dense} >= 0")
    if moe.n_groups < 1 or moe.num_experts % moe.n_groups:
        raise ValueError(f"model.moe.n_groups={moe.n_groups} must divide model.moe.num_experts={moe.num_experts}")
    if not 1 <= moe.topk_groups <= moe.n_groups:
        raise ValueError(f"model.moe.topk_groups={moe.topk_groups} must be between 1 and n_groups={moe.n_groups}")
    if moe.n_groups > 1 and moe.top_k > moe.topk_groups * (moe.num_experts // moe.n_groups):
        raise ValueError(
            f"model.moe.top_k={moe.top_k} exceeds the experts of the topk_groups={moe.topk_groups} groups chosen "
            f"({moe.num_experts // moe.n_groups} each): raise topk_groups"
        )
    if moe.n_groups > 1 and moe.group_score == "top2_sum" and moe.num_experts // moe.n_groups < 2:
        raise ValueError("model.moe.group_score=top2_sum needs at least 2 experts per group")
    if moe.shared_expert_gate and moe.num_shared_experts == 0:
        raise ValueError("model.moe.shared_expert_gate needs shared experts (model.moe.num_shared_experts >= 1)")
    if moe.bias_update_rate < 0:
        raise ValueError(f"model.moe.bias_update_rate must be >= 0, got {moe.bias_update_rate}")
