"""Dense RoPE decoder families: Llama, Mistral, Qwen2/2.5, Qwen3, OLMo 2, Phi-3, Gemma 2, Gemma 3 (text).

Each is Loom's one decoder with some switches set; `problems` lists every switch that differs from what the
transformers class computes, `to_hf`/`from_hf` map the config keys (the `DEFAULTS` are the transformers classes'
own defaults, for keys a config.json may leave out)."""
from __future__ import annotations

from model.config import ModelConfig, RopeScalingConfig
from model.hf.common import HFConversionError
from model.hf.families import (
    Family,
    TensorNames,
    base_config_from_hf,
    check_activation,
    common_hf_fields,
    decoder_problems,
    layer_types,
    register,
    require,
    window_from_layer_types,
)
from model.hf.rope import merged_rope_parameters, rope_from_hf, rope_parameters

ANY = object()  # in a requirement: this family takes any value
# What a plain Llama-style decoder block is; families override the keys they handle.
PLAIN = dict(mla=None, moe=None, qk_norm=False, norm_position="pre", rmsnorm_unit_offset=False,
             scale_embeddings=False, mlp_type="swiglu", query_pre_attn_scalar=None, attn_logit_softcap=None,
             final_logit_softcap=None, local_rope_theta=None, sliding_window=None, sliding_window_pattern=None,
             mlp_bias=False, qkv_bias=False, attn_out_bias=False)


def plain_problems(cfg: ModelConfig, name: str, **overrides) -> list[str]:
    expected = {k: v for k, v in {**PLAIN, **overrides}.items() if v is not ANY}
    return decoder_problems(cfg) + require(cfg, name, **expected)


def same_bias(cfg: ModelConfig, name: str) -> list[str]:
    if cfg.qkv_bias != cfg.attn_out_bias:
        return [f"{name}'s attention_bias covers q/k/v and o together: set qkv_bias = attn_out_bias"]
    return []


def rope_kinds(cfg: ModelConfig, name: str, allowed: tuple[str, ...]) -> list[str]:
    s = cfg.rope_scaling
    if not s.is_plain and s.type not in allowed:
        return [f"{name} takes rope_scaling.type in {list(allowed)}, got {s.type!r}"]
    return []


def loom_base(hf: dict, name: str, defaults: dict, *, keep_mscale_all_dim: bool = False) -> dict:
    max_seq_len = hf.get("max_position_embeddings") or defaults["max_position_embeddings"]
    params = merged_rope_parameters(hf, defaults.get("rope_theta", 10000.0))
    rope = rope_from_hf(hf, params, max_seq_len, keep_mscale_all_dim=keep_mscale_all_dim)
    return base_config_from_hf(hf, name, defaults=defaults, max_seq_len=max_seq_len, rope=rope)


def windows(hf: dict, n_layers: int, default_types: list[str]) -> tuple:
    types = hf.get("layer_types") or default_types
    return window_from_layer_types(types, hf.get("sliding_window"), n_layers)


def sliding_fields(cfg: ModelConfig) -> dict:
    return {"sliding_window": cfg.sliding_window, "layer_types": layer_types(cfg)}


# ---------------------------------------------------------------------------------------------- Llama, Mistral
LLAMA_DEFAULTS = dict(max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _llama_to_hf(cfg: ModelConfig) -> dict:
    return {**common_hf_fields(cfg, LLAMA), "attention_bias": bool(cfg.qkv_bias), "mlp_bias": bool(cfg.mlp_bias),
            "pretraining_tp": 1}


def _llama_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    if hf.get("layer_types") and len(set(hf["layer_types"])) > 1:
        raise HFConversionError("per-layer attention types (layer_types) are not supported for llama")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**loom_base(hf, name, LLAMA_DEFAULTS), qkv_bias=bias, attn_out_bias=bias,
                       mlp_bias=bool(hf.get("mlp_bias", False)), hf_model_type="llama")


LLAMA = register(Family(
    "llama", "LlamaForCausalLM",
    lambda cfg: plain_problems(cfg, "llama", qkv_bias=ANY, attn_out_bias=ANY, mlp_bias=ANY) + same_bias(cfg, "llama")
    + rope_kinds(cfg, "llama", ("linear", "dynamic", "yarn", "llama3", "longrope")),
    _llama_to_hf, _llama_from_hf,
))

MISTRAL_DEFAULTS = dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                        sliding_window=4096)


def _mistral_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    window = hf["sliding_window"] if "sliding_window" in hf else MISTRAL_DEFAULTS["sliding_window"]
    return ModelConfig(**loom_base(hf, name, MISTRAL_DEFAULTS), sliding_window=window, hf_model_type="mistral")


MISTRAL = register(Family(
    "mistral", "MistralForCausalLM",
    lambda cfg: plain_problems(cfg, "mistral", sliding_window=ANY)
    + rope_kinds(cfg, "mistral", ("linear", "dynamic", "yarn", "llama3")),
    lambda cfg: {**common_hf_fields(cfg, MISTRAL), "sliding_window": cfg.sliding_window},
    _mistral_from_hf,
))


# ---------------------------------------------------------------------------------------------- Qwen2, Qwen3
QWEN_DEFAULTS = dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                     sliding_window=4096, max_window_layers=28)


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
    return {"use_sliding_window": sliding, "sliding_window": cfg.sliding_window if sliding else None,
            "max_window_layers": 0 if sliding else cfg.n_layers, "layer_types": layer_types(cfg)}


def _qwen2_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, QWEN_DEFAULTS)
    window, pattern = qwen_windows(hf, base["n_layers"])
    return ModelConfig(**base, qkv_bias=True, attn_out_bias=False, sliding_window=window,
                       sliding_window_pattern=pattern, hf_model_type="qwen2")


QWEN2 = register(Family(
    "qwen2", "Qwen2ForCausalLM",
    lambda cfg: plain_problems(cfg, "qwen2", qkv_bias=True, sliding_window=ANY, sliding_window_pattern=ANY)
    + rope_kinds(cfg, "qwen2", ("linear", "dynamic", "yarn", "llama3")),
    lambda cfg: {**common_hf_fields(cfg, QWEN2), **qwen_sliding_fields(cfg)},
    _qwen2_from_hf,
))


def _qwen3_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, {**QWEN_DEFAULTS, "head_dim": 128})
    window, pattern = qwen_windows(hf, base["n_layers"])
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**base, qkv_bias=bias, attn_out_bias=bias, qk_norm=True, qk_norm_scope="head",
                       sliding_window=window, sliding_window_pattern=pattern, hf_model_type="qwen3")


QWEN3 = register(Family(
    "qwen3", "Qwen3ForCausalLM",
    lambda cfg: plain_problems(cfg, "qwen3", qk_norm=True, qkv_bias=ANY, attn_out_bias=ANY, sliding_window=ANY,
                               sliding_window_pattern=ANY, qk_norm_scope="head")
    + same_bias(cfg, "qwen3") + rope_kinds(cfg, "qwen3", ("linear", "dynamic", "yarn", "llama3")),
    lambda cfg: {**common_hf_fields(cfg, QWEN3), **qwen_sliding_fields(cfg), "attention_bias": bool(cfg.qkv_bias)},
    _qwen3_from_hf,
))


# ---------------------------------------------------------------------------------------------- OLMo 2
OLMO2_DEFAULTS = dict(max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _olmo2_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**loom_base(hf, name, OLMO2_DEFAULTS), norm_position="branch_output", qk_norm=True,
                       qk_norm_scope="full", qkv_bias=bias, attn_out_bias=bias, hf_model_type="olmo2")


OLMO2 = register(Family(
    "olmo2", "Olmo2ForCausalLM",
    lambda cfg: plain_problems(cfg, "olmo2", norm_position="branch_output", qk_norm=True, qk_norm_scope="full",
                               qkv_bias=ANY, attn_out_bias=ANY)
    + same_bias(cfg, "olmo2") + rope_kinds(cfg, "olmo2", ("linear", "dynamic", "yarn", "llama3")),
    lambda cfg: {**common_hf_fields(cfg, OLMO2), "attention_bias": bool(cfg.qkv_bias)},
    _olmo2_from_hf,
))


# ---------------------------------------------------------------------------------------------- Phi-3
PHI3_DEFAULTS = dict(max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _phi3_to_hf(cfg: ModelConfig) -> dict:
    out = common_hf_fields(cfg, PHI3)
    out["rope_parameters"] = {**out["rope_parameters"], "partial_rotary_factor": 1.0}
    s = cfg.rope_scaling
    original = s.original_max_seq_len if s.type == "longrope" and not s.is_plain else cfg.max_seq_len
    return {**out, "original_max_position_embeddings": original, "sliding_window": cfg.sliding_window,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0}


def _phi3_from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    return ModelConfig(**loom_base(hf, name, PHI3_DEFAULTS), sliding_window=hf.get("sliding_window"),
                       hf_model_type="phi3")


PHI3 = register(Family(
    "phi3", "Phi3ForCausalLM",
    lambda cfg: plain_problems(cfg, "phi3", sliding_window=ANY) + rope_kinds(cfg, "phi3", ("longrope",)),
    _phi3_to_hf, _phi3_from_hf,
    TensorNames(fused_qkv=True, fused_gate_up=True),
))


# ---------------------------------------------------------------------------------------------- Gemma 2 and 3
GEMMA2_DEFAULTS = dict(max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       sliding_window=4096, head_dim=256, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0)
GEMMA3_DEFAULTS = dict(max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=True,
                       sliding_window=4096, head_dim=256, query_pre_attn_scalar=256, sliding_window_pattern=6,
                       rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)
GEMMA = dict(norm_position="sandwich", rmsnorm_unit_offset=True, scale_embeddings=True, mlp_type="geglu",
             query_pre_attn_scalar=ANY, attn_logit_softcap=ANY, final_logit_softcap=ANY, sliding_window=ANY,
             sliding_window_pattern=ANY, qkv_bias=ANY, attn_out_bias=ANY)


def _gemma_common_to_hf(cfg: ModelConfig, fam: Family) -> dict:
    scalar = cfg.query_pre_attn_scalar if cfg.query_pre_attn_scalar is not None else cfg.attn_head_dim
    out = common_hf_fields(cfg, fam)
    del out["hidden_act"]
    return {**out, "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar, "attn_logit_softcapping": cfg.attn_logit_softcap,
            "final_logit_softcapping": cfg.final_logit_softcap, "attention_bias": bool(cfg.qkv_bias),
            **sliding_fields(cfg)}


def _gemma_common_from_hf(hf: dict, name: str, defaults: dict, base: dict, default_types: list[str]) -> dict:
    check_activation(hf, "hidden_activation", ("gelu_pytorch_tanh",), "gelu_pytorch_tanh")
    if hf.get("use_bidirectional_attention"):
        raise HFConversionError("use_bidirectional_attention=true (non-causal Gemma) is not supported")
    window, pattern = windows(hf, base["n_layers"], default_types)
    bias = bool(hf.get("attention_bias", False))
    scalar = hf.get("query_pre_attn_scalar", defaults["query_pre_attn_scalar"])

    def optional(key: str):
        return hf[key] if key in hf else defaults.get(key)

    return dict(base, norm_position="sandwich", rmsnorm_unit_offset=True, scale_embeddings=True,
                mlp_type="geglu", query_pre_attn_scalar=float(scalar),
                attn_logit_softcap=optional("attn_logit_softcapping"),
                final_logit_softcap=optional("final_logit_softcapping"), sliding_window=window,
                sliding_window_pattern=pattern, qkv_bias=bias, attn_out_bias=bias)


def _gemma2_from_hf(hf: dict, name: str) -> ModelConfig:
    base = loom_base(hf, name, GEMMA2_DEFAULTS)
    types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(base["n_layers"])]
    return ModelConfig(**_gemma_common_from_hf(hf, name, GEMMA2_DEFAULTS, base, types), hf_model_type="gemma2")


GEMMA2 = register(Family(
    "gemma2", "Gemma2ForCausalLM",
    lambda cfg: plain_problems(cfg, "gemma2", **GEMMA) + same_bias(cfg, "gemma2")
    + rope_kinds(cfg, "gemma2", ("linear", "dynamic", "yarn", "llama3")),
    lambda cfg: _gemma_common_to_hf(cfg, GEMMA2),
    _gemma2_from_hf,
))


def _gemma3_to_hf(cfg: ModelConfig) -> dict:
    out = _gemma_common_to_hf(cfg, GEMMA3)
    local_theta = cfg.local_rope_theta
    local = (rope_parameters(cfg, theta=local_theta, scaling=RopeScalingConfig()) if local_theta is not None
             else rope_parameters(cfg))
    out["rope_parameters"] = {"full_attention": rope_parameters(cfg), "sliding_attention": local}
    out.update(rope_theta=cfg.rope_theta, rope_local_base_freq=local["rope_theta"], rope_scaling=None,
               sliding_window_pattern=cfg.sliding_window_pattern or 1)
    return out


def _gemma3_from_hf(hf: dict, name: str) -> ModelConfig:
    nested = hf.get("rope_parameters") or {}
    full = merged_rope_parameters(hf, GEMMA3_DEFAULTS["rope_theta"], nested.get("full_attention"))
    local = dict(nested.get("sliding_attention") or {})
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", GEMMA3_DEFAULTS["rope_local_base_freq"]))
    local.setdefault("rope_type", "default")
    max_seq_len = hf.get("max_position_embeddings") or GEMMA3_DEFAULTS["max_position_embeddings"]
    rope = rope_from_hf(hf, full, max_seq_len)
    local_theta, local_scaling, _ = rope_from_hf(hf, local, max_seq_len)
    if not local_scaling.is_plain:
        raise HFConversionError("Gemma 3 sliding layers with a scaled RoPE are not supported (Loom's local RoPE "
                                "is plain)")
    base = base_config_from_hf(hf, name, defaults=GEMMA3_DEFAULTS, max_seq_len=rope[2], rope=rope)
    pattern = hf.get("sliding_window_pattern", GEMMA3_DEFAULTS["sliding_window_pattern"])
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(base["n_layers"])]
    fields = _gemma_common_from_hf(hf, name, GEMMA3_DEFAULTS, base, types)
    has_local = fields["sliding_window"] is not None
    return ModelConfig(**fields, qk_norm=True, qk_norm_scope="head",
                       local_rope_theta=float(local_theta) if has_local else None, hf_model_type="gemma3_text")


GEMMA3 = register(Family(
    "gemma3_text", "Gemma3ForCausalLM",
    lambda cfg: plain_problems(cfg, "gemma3_text", **GEMMA, qk_norm=True, qk_norm_scope="head",
                               local_rope_theta=ANY)
    + same_bias(cfg, "gemma3_text") + rope_kinds(cfg, "gemma3_text", ("linear", "dynamic", "yarn", "llama3")),
    _gemma3_to_hf, _gemma3_from_hf,
))
