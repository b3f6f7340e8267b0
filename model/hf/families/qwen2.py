"""Qwen2 / Qwen2.5: a Llama decoder with q/k/v biases (no output bias) and Qwen's per-layer sliding windows."""

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
)


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, QWEN_DEFAULTS)
    window, pattern = qwen_windows(hf, base["n_layers"])
    return ModelConfig(
        **base,
        qkv_bias=True,
        attn_out_bias=False,
        sliding_window=window,
        sliding_window_pattern=pattern,
        hf_model_type="qwen2",
    )


FAMILY = Family(
    "qwen2",
    "Qwen2ForCausalLM",
    lambda cfg: (
        plain_problems(cfg, "qwen2", qkv_bias=True, sliding_window=ANY, sliding_window_pattern=ANY)
        + rope_kinds(cfg, "qwen2")
    ),
    lambda cfg: {**common_hf_fields(cfg, FAMILY), **qwen_sliding_fields(cfg)},
    _from_hf,
    matches=lambda cfg: cfg.qkv_bias and not cfg.attn_out_bias,
    priority=30,  # before phi3 and mistral: Qwen2's biases are what sets it apart
)
