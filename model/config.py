"""Typed model configuration.

Every architecture Loom trains is one of these dataclasses filled from `configs/model/*.yaml`, so adding a model
is a config file, not code. The dataclasses double as Hydra structured configs: a misspelt key or a wrong type
fails when the config is composed, before any work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RopeScalingConfig:
    """Long-context RoPE frequency scaling. `type="none"` (or factor 1) is plain RoPE.

    - linear: position interpolation (positions divided by `factor`).
    - ntk: NTK-aware scaling of the base (theta * factor ** (d / (d - 2))).
    - yarn: NTK-by-parts interpolation with ramp between `beta_fast`/`beta_slow` and attention temperature.
    - llama3: Llama-3.1 frequency-dependent scaling with `low_freq_factor`/`high_freq_factor`.
    """

    type: str = "none"  # none | linear | ntk | yarn | llama3
    factor: float = 1.0
    original_max_seq_len: int = 8192
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float = 1.0  # yarn attention-temperature multiplier (0.1 * mscale * ln(factor) + 1)


@dataclass
class MoEConfig:
    """Mixture-of-experts feed-forward. Replaces the dense MLP in the layers selected by `every`/`first_dense`."""

    num_experts: int = 8
    top_k: int = 2
    num_shared_experts: int = 0  # DeepSeek-style experts every token goes through
    expert_hidden_dim: Optional[int] = None  # None: same sizing rule as the dense MLP
    shared_expert_hidden_dim: Optional[int] = None  # None: expert_hidden_dim
    aux_loss_weight: float = 0.01  # Switch load balancing: num_experts * sum_i f_i * P_i
    router_z_loss_weight: float = 0.001
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1 (Mixtral)
    every: int = 1  # MoE in every `every`-th layer
    first_dense: int = 0  # the first `first_dense` layers stay dense (DeepSeek)


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
    norm_position: str = "pre"  # pre | post | sandwich

    # Positions
    pos_embedding: str = "rope"  # rope | alibi | learned | none
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)

    # Attention
    qkv_bias: bool = False
    attn_out_bias: bool = False
    qk_norm: bool = False
    attn_logit_softcap: Optional[float] = None
    sliding_window: Optional[int] = None  # tokens a query may look back (Mistral: 4096); None: full causal

    # MLP
    mlp_type: str = "swiglu"  # swiglu | gelu
    hidden_dim: Optional[int] = None  # explicit FFN width; None: derived from the rule below
    ffn_dim_multiplier: Optional[float] = None  # Llama sizing: int(2*4*dim/3 * mult) rounded up to multiple_of
    multiple_of: int = 256
    mlp_bias: bool = False

    # Embeddings and output
    tie_embeddings: bool = False
    final_logit_softcap: Optional[float] = None
    z_loss_weight: float = 0.0  # PaLM z-loss on the log-partition of the output logits

    moe: Optional[MoEConfig] = None

    init_std: float = 0.02
    loss_chunk_size: int = 4096  # tokens per chunk when computing the loss, bounding fp32 logits memory

    def __post_init__(self) -> None:
        validate_model_config(self)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

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

    def is_moe_layer(self, layer_idx: int) -> bool:
        if self.moe is None or layer_idx < self.moe.first_dense:
            return False
        return (layer_idx - self.moe.first_dense) % self.moe.every == 0


_CHOICES = {
    "norm_type": ("rmsnorm", "layernorm"),
    "norm_position": ("pre", "post", "sandwich"),
    "pos_embedding": ("rope", "alibi", "learned", "none"),
    "mlp_type": ("swiglu", "gelu"),
}


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ValueError naming the key and the fix; called on construction so bad configs fail early."""
    # Hydra builds structured configs without running __post_init__ on every access, so this is also called
    # explicitly by model.build().
    for key, allowed in _CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ValueError(f"model.{key}={value!r} is not one of {list(allowed)}")
    scaling = cfg.rope_scaling
    scaling_type = scaling["type"] if isinstance(scaling, dict) else scaling.type
    if scaling_type not in ("none", "linear", "ntk", "yarn", "llama3"):
        raise ValueError(f"model.rope_scaling.type={scaling_type!r} is not one of none|linear|ntk|yarn|llama3")
    for key in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"model.{key} must be positive, got {getattr(cfg, key)}")
    if cfg.head_dim is None and cfg.dim % cfg.n_heads != 0:
        raise ValueError(
            f"model.dim={cfg.dim} is not divisible by model.n_heads={cfg.n_heads}: change one, or set model.head_dim"
        )
    if cfg.n_heads % cfg.kv_heads != 0:
        raise ValueError(
            f"model.n_heads={cfg.n_heads} must be a multiple of model.n_kv_heads={cfg.kv_heads} (GQA groups)"
        )
    if cfg.pos_embedding == "rope" and cfg.attn_head_dim % 2 != 0:
        raise ValueError(f"RoPE needs an even head dim, got {cfg.attn_head_dim}")
    if cfg.sliding_window is not None and cfg.sliding_window <= 0:
        raise ValueError(f"model.sliding_window must be positive or null, got {cfg.sliding_window}")
    if cfg.moe is not None:
        moe = cfg.moe
        num_experts = moe["num_experts"] if isinstance(moe, dict) else moe.num_experts
        top_k = moe["top_k"] if isinstance(moe, dict) else moe.top_k
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"model.moe.top_k={top_k} must be between 1 and model.moe.num_experts={num_experts}")
