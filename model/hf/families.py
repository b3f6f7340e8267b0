"""Which transformers architecture a Loom config is, and the config.json fields of each.

A `Family` knows, for one transformers `model_type`: why a Loom config cannot be it (`problems`), the config.json
fields it needs (`to_hf`), the Loom config of a config.json of its type (`from_hf`), and how its tensors are
named (`names`, read by model/hf/weights.py). `family_for(cfg)` picks the one family whose architecture is the
config's (features decide: latent attention -> DeepSeek, a gated shared expert -> Qwen2-MoE, Gemma's norms ->
Gemma, ...), so export never approximates: anything the chosen class cannot compute identically is refused with
the reason. The families themselves are registered by model/hf/arch_dense.py, arch_moe.py and arch_gpt2.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.rope import max_position_embeddings, rope_config_fields


@dataclass
class TensorNames:
    """How one family names its decoder tensors (model/hf/weights.py builds the rename rules from this)."""

    fused_qkv: bool = False  # Phi-3: q, k, v in one qkv_proj
    fused_gate_up: bool = False  # Phi-3: gate and up in one gate_up_proj
    moe_prefix: str = "mlp"  # Mixtral: block_sparse_moe
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # Loom w1, w3, w2
    shared_name: str = "shared_experts"  # Qwen2-MoE: shared_expert
    bias_name: Optional[str] = None  # the selection-bias tensor under the MoE prefix
    bias_2d: bool = False  # ERNIE stores it as [1, E]
    interleaved_rope: bool = False  # q/k rotary rows stored as interleaved pairs (permuted on conversion)
    # DeepSeek-V3: multi-token-prediction modules stored as layers n_layers, n_layers + 1, ... (enorm, hnorm,
    # eh_proj, shared_head.norm beside the decoder layer's own tensors, plus copies of the embedding and head)
    mtp_layers: bool = False


@dataclass
class Family:
    model_type: str
    architecture: str
    problems: Callable[[ModelConfig], list[str]]
    to_hf: Callable[[ModelConfig], dict]
    from_hf: Callable[[dict, str], ModelConfig]
    names: TensorNames = field(default_factory=TensorNames)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.model_type] = family
    return family


def family(model_type: str) -> Family:
    _load_families()
    if model_type not in FAMILIES:
        raise HFConversionError(
            f"model_type={model_type!r} is not supported (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[model_type]


def _load_families() -> None:
    if not FAMILIES:
        import model.hf.arch_dense  # noqa: F401 - registers its families
        import model.hf.arch_gpt2  # noqa: F401
        import model.hf.arch_moe  # noqa: F401


def _guess(cfg: ModelConfig) -> str:
    """The architecture a config's features point to (checked afterwards by that family's `problems`)."""
    moe = cfg.moe
    if cfg.pos_embedding == "learned" or cfg.norm_type == "layernorm" or cfg.mlp_type == "gelu":
        return "gpt2"
    if cfg.mla is not None:
        return "deepseek_v3" if moe is not None and (moe.score_func == "sigmoid" or moe.expert_bias) else "deepseek_v2"
    if moe is not None:
        if moe.shared_expert_gate:
            return "qwen2_moe"
        if cfg.qk_norm:
            return "qwen3_moe"
        if moe.num_shared_experts or moe.expert_bias:
            return "ernie4_5_moe"
        return "mixtral"
    gemma = (cfg.rmsnorm_unit_offset or cfg.scale_embeddings or cfg.mlp_type == "geglu"
             or cfg.norm_position == "sandwich" or cfg.query_pre_attn_scalar is not None)
    if gemma:
        return "gemma3_text" if cfg.qk_norm or cfg.local_rope_theta is not None else "gemma2"
    if cfg.norm_position == "branch_output":
        return "olmo2"
    if cfg.qk_norm:
        return "qwen3"
    if cfg.qkv_bias and not cfg.attn_out_bias:
        return "qwen2"
    if cfg.rope_scaling.type == "longrope":
        return "phi3"
    if cfg.sliding_window is not None:
        return "mistral"
    return "llama"


def family_for(cfg: ModelConfig, model_type: Optional[str] = None) -> Family:
    """The family `cfg` exports to: `model_type` if given, else the one it was imported from when it still fits,
    else the one its features point to. HFConversionError lists why it does not fit."""
    _load_families()
    if model_type is None and cfg.hf_model_type in FAMILIES and not FAMILIES[cfg.hf_model_type].problems(cfg):
        model_type = cfg.hf_model_type
    chosen = family(model_type or _guess(cfg))
    problems = chosen.problems(cfg)
    if problems:
        raise HFConversionError(
            f"model config {cfg.name!r} cannot be exported to Hugging Face as {chosen.model_type} "
            f"({chosen.architecture}): " + "; ".join(problems)
        )
    return chosen


# ---------------------------------------------------------------------------------------------- shared pieces
def decoder_problems(cfg: ModelConfig) -> list[str]:
    """What no RoPE decoder family here has (GPT-2 has its own rules)."""
    problems = []
    if cfg.pos_embedding != "rope":
        problems.append(f"pos_embedding={cfg.pos_embedding!r} (the decoders here use RoPE)")
    if cfg.norm_type != "rmsnorm":
        problems.append(f"norm_type={cfg.norm_type!r} (RMSNorm only)")
    if cfg.mla is None and cfg.dim % cfg.n_heads:
        problems.append(f"transformers requires dim ({cfg.dim}) divisible by n_heads ({cfg.n_heads})")
    if cfg.rope_scaling.type == "ntk" and not cfg.rope_scaling.is_plain:
        problems.append("rope_scaling.type=ntk (static NTK) has no transformers equivalent (use dynamic)")
    return problems


def require(cfg: ModelConfig, family_name: str, **expected) -> list[str]:
    """Problems for every ModelConfig field whose value differs from the one `family_name` computes."""
    problems = []
    for key, want in expected.items():
        got = getattr(cfg, key)
        if got != want:
            problems.append(f"{family_name} needs {key}={want!r} (got {got!r})")
    return problems


def common_hf_fields(cfg: ModelConfig, fam: Family) -> dict:
    """config.json fields every RoPE decoder family shares."""
    return {
        "architectures": [fam.architecture], "model_type": fam.model_type, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_hidden_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.attn_head_dim,
        "hidden_act": "silu", "max_position_embeddings": max_position_embeddings(cfg),
        "rms_norm_eps": cfg.norm_eps, "attention_dropout": 0.0, "tie_word_embeddings": bool(cfg.tie_embeddings),
        "initializer_range": cfg.init_std, "use_cache": True, **rope_config_fields(cfg),
    }


def layer_types(cfg: ModelConfig) -> list[str]:
    return ["full_attention" if cfg.layer_window(i) is None else "sliding_attention" for i in range(cfg.n_layers)]


def window_from_layer_types(types: list[str], window: Optional[int], n_layers: int) -> tuple[Optional[int], Optional[int]]:
    """(sliding_window, sliding_window_pattern) reproducing transformers' per-layer attention types."""
    sliding = [t == "sliding_attention" for t in types]
    if len(sliding) != n_layers or any(t not in ("sliding_attention", "full_attention") for t in types):
        raise HFConversionError(f"layer_types {types} must give full_attention/sliding_attention for each of "
                                f"{n_layers} layers")
    if not any(sliding) or not window:
        return None, None
    if all(sliding):
        return window, None
    full = [i for i, s in enumerate(sliding) if not s]
    pattern = full[0] + 1
    if all(sliding[i] == ((i + 1) % pattern != 0) for i in range(n_layers)):
        return window, pattern
    raise HFConversionError(f"layer_types {types}: Loom's sliding layers follow a period (every k-th layer "
                            f"global); this pattern has none")


def moe_layout_from_layers(moe_layers: list[int], n_layers: int) -> tuple[int, int]:
    """(first_dense, every) with exactly `moe_layers` as Loom's MoE layers."""
    if not moe_layers:
        raise HFConversionError("the checkpoint has no MoE layer")
    first = moe_layers[0]
    if len(moe_layers) > 1:
        every = moe_layers[1] - moe_layers[0]
    else:  # one MoE layer: a period that skips past the last layer, (first + 1) when it does (Qwen-style)
        every = first + 1 if first + (first + 1) >= n_layers else n_layers
    if [i for i in range(n_layers) if i >= first and (i - first) % every == 0] != moe_layers:
        raise HFConversionError(f"MoE layers {moe_layers}: Loom's MoE layers are every k-th from the first one")
    return first, every


def base_config_from_hf(hf: dict, name: str, *, defaults: dict, max_seq_len: int, rope: tuple) -> dict:
    """ModelConfig fields every RoPE decoder family shares, from config.json (`defaults`: the transformers class's
    own defaults for keys a config.json may omit)."""
    def get(key: str):
        return hf[key] if hf.get(key) is not None else defaults.get(key)

    dim, n_heads = get("hidden_size"), get("num_attention_heads")
    theta, scaling, max_seq_len = rope
    return dict(
        name=name, vocab_size=get("vocab_size"), dim=dim, n_layers=get("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=get("num_key_value_heads") or n_heads, head_dim=get("head_dim") or dim // n_heads,
        max_seq_len=max_seq_len, norm_type="rmsnorm", norm_eps=get("rms_norm_eps"), pos_embedding="rope",
        rope_theta=theta, rope_scaling=scaling, mlp_type="swiglu", hidden_dim=get("intermediate_size"),
        tie_embeddings=bool(get("tie_word_embeddings")), init_std=get("initializer_range") or 0.02,
    )


def check_activation(hf: dict, key: str, allowed: tuple[str, ...], default: str) -> str:
    act = hf.get(key) or default
    if act not in allowed:
        raise HFConversionError(f"{key}={act!r}: Loom's gated MLP here uses {' or '.join(allowed)}")
    return act
