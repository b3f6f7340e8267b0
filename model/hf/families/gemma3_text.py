"""Gemma 3 (text): Gemma 2's block with per-head q/k RMSNorm instead of soft-capping and its own RoPE theta on the
sliding layers."""

from __future__ import annotations

from model.config import ModelConfig, RopeScalingConfig
from model.hf.common import HFConversionError
from model.hf.family import Family
from model.hf.family_kit import (
    ANY,
    GEMMA,
    base_config_from_hf,
    gemma_common_from_hf,
    gemma_common_to_hf,
    looks_like_gemma,
    plain_problems,
    rope_kinds,
    same_bias,
)
from model.hf.rope import merged_rope_parameters, rope_from_hf, rope_parameters

DEFAULTS = dict(
    max_position_embeddings=131072,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    sliding_window=4096,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window_pattern=6,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
)


def _to_hf(cfg: ModelConfig) -> dict:
    out = gemma_common_to_hf(cfg, FAMILY)
    local_theta = cfg.local_rope_theta
    local = (
        rope_parameters(cfg, theta=local_theta, scaling=RopeScalingConfig())
        if local_theta is not None
        else rope_parameters(cfg)
    )
    out["rope_parameters"] = {"full_attention": rope_parameters(cfg), "sliding_attention": local}
    out.update(
        rope_theta=cfg.rope_theta,
        rope_local_base_freq=local["rope_theta"],
        rope_scaling=None,
        sliding_window_pattern=cfg.sliding_window_pattern or 1,
    )
    return out


def _from_hf(hf: dict, name: str) -> ModelConfig:
    nested = hf.get("rope_parameters") or {}
    full = merged_rope_parameters(hf, DEFAULTS["rope_theta"], nested.get("full_attention"))
    local = dict(nested.get("sliding_attention") or {})
    local.setdefault("rope_theta", hf.get("rope_local_base_freq", DEFAULTS["rope_local_base_freq"]))
    local.setdefault("rope_type", "default")
    max_seq_len = hf.get("max_position_embeddings") or DEFAULTS["max_position_embeddings"]
    rope = rope_from_hf(hf, full, max_seq_len)
    local_theta, local_scaling, _ = rope_from_hf(hf, local, max_seq_len)
    if not local_scaling.is_plain:
        raise HFConversionError(
            "Gemma 3 sliding layers with a scaled RoPE are not supported (Loom's local RoPE is plain)"
        )
    base = base_config_from_hf(hf, name, defaults=DEFAULTS, max_seq_len=rope[2], rope=rope)
    pattern = hf.get("sliding_window_pattern", DEFAULTS["sliding_window_pattern"])
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(base["n_layers"])]
    fields = gemma_common_from_hf(hf, name, DEFAULTS, base, types)
    has_local = fields["sliding_window"] is not None
    return ModelConfig(
        **fields,
        qk_norm=True,
        qk_norm_scope="head",
        local_rope_theta=float(local_theta) if has_local else None,
        hf_model_type="gemma3_text",
    )


FAMILY = Family(
    "gemma3_text",
    "Gemma3ForCausalLM",
    lambda cfg: (
        plain_problems(cfg, "gemma3_text", **GEMMA, qk_norm=True, qk_norm_scope="head", local_rope_theta=ANY)
        + same_bias(cfg, "gemma3_text")
        + rope_kinds(cfg, "gemma3_text")
    ),
    _to_hf,
    _from_hf,
    matches=lambda cfg: looks_like_gemma(cfg) and (cfg.qk_norm or cfg.local_rope_theta is not None),
    priority=70,  # the most specific dense decoder: below every MoE/MLA family, above every other dense one
)
