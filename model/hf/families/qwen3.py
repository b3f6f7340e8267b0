"""Qwen3: a Llama decoder with per-head q/k RMSNorm and Qwen's per-layer sliding windows."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family
from model.hf.family_kit import (
    ANY,
    QWEN_DEFAULTS,
    check_activation,
    common_hf_fields,
    loom_base,
    plain_problems,
    qwen_sliding_fields,
    qwen_windows,
    rope_kinds,
    same_bias,
)


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, {**QWEN_DEFAULTS, "head_dim": 128})
    window, pattern = qwen_windows(hf, base["n_layers"])
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        **base,
        qkv_bias=bias,
        attn_out_bias=bias,
        qk_norm=True,
        qk_norm_scope="head",
        sliding_window=window,
        sliding_window_pattern=pattern,
        hf_model_type="qwen3",
    )


FAMILY = Family(
    "qwen3",
    "Qwen3ForCausalLM",
    lambda cfg: (
        plain_problems(
            cfg,
            "qwen3",
            qk_norm=True,
            qkv_bias=ANY,
            attn_out_bias=ANY,
            sliding_window=ANY,
            sliding_window_pattern=ANY,
            qk_norm_scope="head",
        )
        + same_bias(cfg, "qwen3")
        + rope_kinds(cfg, "qwen3")
    ),
    lambda cfg: {**common_hf_fields(cfg, FAMILY), **qwen_sliding_fields(cfg), "attention_bias": bool(cfg.qkv_bias)},
    _from_hf,
    matches=lambda cfg: cfg.qk_norm,
    priority=40,  # a dense decoder with q/k norms that neither Gemma 3 nor OLMo 2 (higher) claimed
)
