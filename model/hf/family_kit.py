"""Pieces the family modules (model/hf/families/) share: requirement checks, config.json fields and their Loom
counterparts for RoPE decoders, sliding windows, MoE layouts, and what sibling families (Qwen, Gemma, DeepSeek)
have in common. Families import this module; it imports no family, so no family module needs another's."""

from __future__ import annotations

from model.config import MLAConfig, ModelConfig, MoEConfig
from model.hf.common import HFConversionError
from model.hf.family import Family
from model.hf.rope import (
    max_position_embeddings,
    merged_rope_parameters,
    rope_config_fields,
    rope_from_hf,
)

ANY = object()  # in a requirement: this family takes any value
# What a plain Llama-style decoder block is; families override the keys they handle.
PLAIN = dict(
    mla=None,
    moe=None,
    qk_norm=False,
    norm_position="pre",
    rmsnorm_unit_offset=False,
    scale_embeddings=False,
    mlp_type="swiglu",
    query_pre_attn_scalar=None,
    attn_logit_softcap=None,
    final_logit_softcap=None,
    local_rope_theta=None,
    sliding_window=None,
    sliding_window_pattern=None,
    mlp_bias=False,
    qkv_bias=False,
    attn_out_bias=False,
)


# ---------------------------------------------------------------------------------------------- requirements
def require(cfg: ModelConfig, family_name: str, **expected) -> list[str]:
    """Problems for every ModelConfig field whose value differs from the one `family_name` computes."""
    problems = []
    for key, want in expected.items():
        got = getattr(cfg, key)
        if got != want:
            problems.append(f"{family_name} needs {key}={want!r} (got {got!r})")
    return problems


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


def plain_problems(cfg: ModelConfig, name: str, **overrides) -> list[str]:
    """`decoder_problems` plus every switch of `PLAIN` (as `overrides` change it) that `cfg` sets otherwise."""
    expected = {k: v for k, v in {**PLAIN, **overrides}.items() if v is not ANY}
    return decoder_problems(cfg) + require(cfg, name, **expected)


def same_bias(cfg: ModelConfig, name: str) -> list[str]:
    if cfg.qkv_bias != cfg.attn_out_bias:
        return [f"{name}'s attention_bias covers q/k/v and o together: set qkv_bias = attn_out_bias"]
    return []


# The RoPE scalings transformers reads from `rope_scaling` for every family that takes any (Phi-3 alone differs)
HF_ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3")


def rope_kinds(cfg: ModelConfig, name: str, allowed: tuple[str, ...] = HF_ROPE_SCALINGS) -> list[str]:
    s = cfg.rope_scaling
    if not s.is_plain and s.type not in allowed:
        return [f"{name} takes rope_scaling.type in {list(allowed)}, got {s.type!r}"]
    return []


# ---------------------------------------------------------------------------------------------- config fields
def common_hf_fields(cfg: ModelConfig, fam: Family) -> dict:
    """config.json fields every RoPE decoder family shares."""
    return {
        "architectures": [fam.architecture],
        "model_type": fam.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.attn_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings(cfg),
        "rms_norm_eps": cfg.norm_eps,
        "attention_dropout": 0.0,
        "tie_word_embeddings": bool(cfg.tie_embeddings),
        "initializer_range": cfg.init_std,
        "use_cache": True,
        **rope_config_fields(cfg),
    }


def base_config_from_hf(hf: dict, name: str, *, defaults: dict, max_seq_len: int, rope: tuple) -> dict:
    """ModelConfig fields every RoPE decoder family shares, from config.json (`defaults`: the transformers class's
    own defaults for keys a config.json may omit)."""

    def get(key: str):
        return hf[key] if hf.get(key) is not None else defaults.get(key)

    dim, n_heads = get("hidden_size"), get("num_attention_heads")
    theta, scaling, max_seq_len = rope
    return dict(
        name=name,
        vocab_size=get("vocab_size"),
        dim=dim,
        n_layers=get("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=get("num_key_value_heads") or n_heads,
        head_dim=get("head_dim") or dim // n_heads,
        max_seq_len=max_seq_len,
        norm_type="rmsnorm",
        norm_eps=get("rms_norm_eps"),
        pos_embedding="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        mlp_type="swiglu",
        hidden_dim=get("intermediate_size"),
        tie_embeddings=bool(get("tie_word_embeddings")),
        init_std=get("initializer_range") or 0.02,
    )


def loom_base(hf: dict, name: str, defaults: dict, *, keep_mscale_all_dim: bool = False) -> dict:
    """`base_config_from_hf` with the RoPE (theta, scaling, context) read from config.json's rope fields."""
    max_seq_len = hf.get("max_position_embeddings") or defaults["max_position_embeddings"]
    params = merged_rope_parameters(hf, defaults.get("rope_theta", 10000.0))
    rope = rope_from_hf(hf, params, max_seq_len, keep_mscale_all_dim=keep_mscale_all_dim)
    return base_config_from_hf(hf, name, defaults=defaults, max_seq_len=max_seq_len, rope=rope)


def check_activation(hf: dict, key: str, allowed: tuple[str, ...], default: str) -> str:
    act = hf.get(key) or default
    if act not in allowed:
        raise HFConversionError(f"{key}={act!r}: Loom's gated MLP here uses {' or '.join(allowed)}")
    return act


# ---------------------------------------------------------------------------------------------- sliding windows
def layer_types(cfg: ModelConfig) -> list[str]:
    return ["full_attention" if cfg.layer_window(i) is None else "sliding_attention" for i in range(cfg.n_layers)]


def window_from_layer_types(types: list[str], window: int | None, n_layers: int) -> tuple[int | None, int | None]:
    """(sliding_window, sliding_window_pattern) reproducing transformers' per-layer attention types."""
    sliding = [t == "sliding_attention" for t in types]
    if len(sliding) != n_layers or any(t not in ("sliding_attention", "full_attention") for t in types):
        raise HFConversionError(
            f"layer_types {types} must give full_attention/sliding_attention for each of {n_layers} layers"
        )
    if not any(sliding) or not window:
        return None, None
    if all(sliding):
        return window, None
    full = [i for i, s in enumerate(sliding) if not s]
    pattern = full[0] + 1
    if all(sliding[i] == ((i + 1) % pattern != 0) for i in range(n_layers)):
        return window, pattern
    raise HFConversionError(
        f"layer_types {types}: Loom's sliding layers follow a period (every k-th layer global); this pattern has none"
    )


def windows(hf: dict, n_layers: int, default_types: list[str]) -> tuple:
    types = hf.get("layer_types") or default_types
    return window_from_layer_types(types, hf.get("sliding_window"), n_layers)


def sliding_fields(cfg: ModelConfig) -> dict:
    return {"sliding_window": cfg.sliding_window, "layer_types": layer_types(cfg)}


# ---------------------------------------------------------------------------------------------- Qwen (dense and MoE)
QWEN_DEFAULTS = dict(
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    sliding_window=4096,
    max_window_layers=28,
)


def qwen_windows(hf: dict, n_layers: int) -> tuple:
    """Qwen's per-layer windows: layer_types when given, else use_sliding_window from max_window_layers on."""
    if not hf.get("use_sliding_window", False) and not hf.get("layer_types"):
        return None, None
    start = hf.get("max_window_layers", QWEN_DEFAULTS["max_window_layers"])
    default = ["sliding_attention" if i >= start else "full_attention" for i in range(n_layers)]
    window = hf.get("sliding_window", QWEN_DEFAULTS["sliding_window"]) if hf.get("use_sliding_window") else None
    return window_from_layer_types(hf.get("layer_types") or default, window, n_layers)


def qwen_sliding_fields(cfg: ModelConfig) -> dict:
    sliding = cfg.sliding_window is not None
    return {
        "use_sliding_window": sliding,
        "sliding_window": cfg.sliding_window if sliding else None,
        "max_window_layers": 0 if sliding else cfg.n_layers,
        "layer_types": layer_types(cfg),
    }


def qwen_moe_layers_to_hf(cfg: ModelConfig) -> dict:
    step = cfg.moe.every
    return {
        "decoder_sparse_step": step,
        "mlp_only_layers": [i for i in range(cfg.n_layers) if (i + 1) % step == 0 and not cfg.is_moe_layer(i)],
    }


def qwen_moe_layers_from_hf(hf: dict, n_layers: int) -> list[int]:
    step, dense = hf.get("decoder_sparse_step", 1), set(hf.get("mlp_only_layers") or [])
    return [i for i in range(n_layers) if i not in dense and (i + 1) % step == 0]


# ---------------------------------------------------------------------------------------------- Gemma 2 and 3
# The switches every Gemma sets, for plain_problems.
GEMMA = dict(
    norm_position="sandwich",
    rmsnorm_unit_offset=True,
    scale_embeddings=True,
    mlp_type="geglu",
    query_pre_attn_scalar=ANY,
    attn_logit_softcap=ANY,
    final_logit_softcap=ANY,
    sliding_window=ANY,
    sliding_window_pattern=ANY,
    qkv_bias=ANY,
    attn_out_bias=ANY,
)


def looks_like_gemma(cfg: ModelConfig) -> bool:
    """Any of Gemma's own switches: unit-offset norms, scaled embeddings, GeGLU, sandwich norms, a query scalar."""
    return (
        cfg.rmsnorm_unit_offset
        or cfg.scale_embeddings
        or cfg.mlp_type == "geglu"
        or cfg.norm_position == "sandwich"
        or cfg.query_pre_attn_scalar is not None
    )


def gemma_common_to_hf(cfg: ModelConfig, fam: Family) -> dict:
    scalar = cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else cfg.attn_head_dim
    out = common_hf_fields(cfg, fam)
    del out["hidden_act"]
    return {
        **out,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar,
        "attn_logit_softcapping": cfg.attn_logit_softcap,
        "final_logit_softcapping": cfg.final_logit_softcap,
        "attention_bias": bool(cfg.qkv_bias),
        **sliding_fields(cfg),
    }


def gemma_common_from_hf(hf: dict, name: str, defaults: dict, base: dict, default_types: list[str]) -> dict:
    check_activation(hf, "hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
    if hf.get("use_bidirectional_attention"):
        raise HFConversionError("use_bidirectional_attention=true (non-causal Gemma) is not supported")
    window, pattern = windows(hf, base["n_layers"], default_types)
    bias = bool(hf.get("attention_bias", False))
    scalar = hf.get("query_pre_attn_scalar", defaults["query_pre_attn_scalar"])

    def optional(key: str):
        return hf[key] if key in hf else defaults.get(key)

    return dict(
        base,
        norm_position="sandwich",
        rmsnorm_unit_offset=True,
        scale_embeddings=True,
        mlp_type="geglu",
        query_pre_attn_scalar=float(scalar),
        attn_logit_softcap=optional("attn_logit_softcapping"),
        final_logit_softcap=optional("final_logit_softcapping"),
        sliding_window=window,
        sliding_window_pattern=pattern,
        qkv_bias=bias,
        attn_out_bias=bias,
    )


# ---------------------------------------------------------------------------------------------- mixture of experts
# What a plain top-k softmax router is; families override the keys they handle.
ROUTER = dict(
    num_shared_experts=0,
    shared_expert_gate=False,
    score_func="softmax",
    norm_topk_prob=True,
    routed_scaling_factor=1.0,
    n_groups=1,
    expert_bias=False,
    every=1,
    first_dense=0,
)


def moe_problems(cfg: ModelConfig, name: str, **overrides) -> list[str]:
    if cfg.moe is None:
        return [f"{name} is a mixture-of-experts architecture: set model.moe"]
    expected = {k: v for k, v in {**ROUTER, **overrides}.items() if v is not ANY}
    problems = [p.replace(" needs ", " needs moe.") for p in require(cfg.moe, name, **expected)]
    if cfg.moe.n_groups == 1 and "topk_groups" not in overrides and cfg.moe.topk_groups != 1:
        problems.append(f"{name} needs moe.topk_groups=1")
    return problems


def shared_width_problems(cfg: ModelConfig, name: str) -> list[str]:
    """Families whose shared experts are n_shared x the routed experts' width."""
    moe = cfg.moe
    if moe is not None and moe.shared_expert_hidden_dim not in (None, cfg.expert_hidden_dim):
        return [f"{name}'s shared experts are as wide as the routed ones: set moe.shared_expert_hidden_dim null"]
    return []


def placement_problems(cfg: ModelConfig, name: str) -> list[str]:
    """Families that place MoE layers at (i + 1) % every == 0 from a start layer."""
    moe = cfg.moe
    if moe is not None and (moe.first_dense + 1) % moe.every:
        return [
            f"{name} places MoE layers where (layer + 1) % every == 0: choose first_dense and every with "
            f"(first_dense + 1) % every == 0"
        ]
    return []


def moe_common_to_hf(cfg: ModelConfig, fam: Family) -> dict:
    return {
        **common_hf_fields(cfg, fam),
        "router_aux_loss_coef": cfg.moe.aux_loss_weight,
        "output_router_logits": False,
    }


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


def moe_from_hf(hf: dict, n_layers: int, moe_layer_list: list[int], **fields) -> MoEConfig:
    first_dense, every = moe_layout_from_layers(moe_layer_list, n_layers)
    return MoEConfig(
        first_dense=first_dense,
        every=every,
        aux_loss_weight=hf.get("router_aux_loss_coef", 0.001),
        router_z_loss_weight=0.0,
        **fields,
    )


# ---------------------------------------------------------------------------------------------- DeepSeek V2 and V3
DEEPSEEK_DEFAULTS = dict(max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False)
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def deepseek_problems(cfg: ModelConfig, name: str, **router) -> list[str]:
    problems = plain_problems(cfg, name, mla=ANY, moe=ANY, qkv_bias=ANY, attn_out_bias=ANY) + same_bias(cfg, name)
    if cfg.mla is None:
        problems.append(f"{name} uses multi-head latent attention: set model.mla")
    problems += moe_problems(
        cfg,
        name,
        num_shared_experts=ANY,
        routed_scaling_factor=ANY,
        n_groups=ANY,
        topk_groups=ANY,
        first_dense=ANY,
        **router,
    )
    return problems + shared_width_problems(cfg, name)


def deepseek_to_hf(cfg: ModelConfig, fam: Family) -> dict:
    moe, mla = cfg.moe, cfg.mla
    out = moe_common_to_hf(cfg, fam)
    del out["head_dim"]  # transformers sets it to qk_rope_head_dim itself
    out.update({key: getattr(mla, key) for key in MLA_KEYS})
    out.update(
        num_key_value_heads=cfg.n_heads,
        attention_bias=bool(cfg.qkv_bias),
        n_routed_experts=moe.num_experts,
        num_experts_per_tok=moe.top_k,
        n_shared_experts=moe.num_shared_experts,
        moe_intermediate_size=cfg.expert_hidden_dim,
        first_k_dense_replace=moe.first_dense,
        n_group=moe.n_groups,
        topk_group=moe.topk_groups,
        routed_scaling_factor=moe.routed_scaling_factor,
        norm_topk_prob=moe.norm_topk_prob,
    )
    return out


def deepseek_from_hf(hf: dict, name: str, **router) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, DEEPSEEK_DEFAULTS, keep_mscale_all_dim=True)
    base.update(n_kv_heads=None, head_dim=None)
    n = base["n_layers"]
    mla = MLAConfig(**{key: hf[key] for key in MLA_KEYS if key in hf})
    first = hf.get("first_k_dense_replace", 0)
    n_groups = hf.get("n_group") or 1
    moe = moe_from_hf(
        hf,
        n,
        list(range(first, n)),
        num_experts=hf.get("n_routed_experts", 64),
        top_k=hf.get("num_experts_per_tok") or 6,
        expert_hidden_dim=hf.get("moe_intermediate_size"),
        num_shared_experts=hf.get("n_shared_experts") or 0,
        n_groups=n_groups,
        topk_groups=hf.get("topk_group") or 1,
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        **router,
    )
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**base, mla=mla, moe=moe, qkv_bias=bias, attn_out_bias=bias, hf_model_type=hf["model_type"])
