"""Llama: Loom's plain RoPE decoder (SwiGLU, RMSNorm, grouped-query attention); also the family of any decoder no
more specific family claims."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.family import Family
from model.hf.family_kit import (
    ANY,
    HF_ROPE_SCALINGS,
    check_activation,
    common_hf_fields,
    loom_base,
    plain_problems,
    rope_kinds,
    same_bias,
)

DEFAULTS = dict(max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)


def _to_hf(cfg: ModelConfig) -> dict:
    return {
        **common_hf_fields(cfg, FAMILY),
        "attention_bias": bool(cfg.qkv_bias),
        "mlp_bias": bool(cfg.mlp_bias),
        "pretraining_tp": 1,
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    if hf.get("layer_types") and len(set(hf["layer_types"])) > 1:
        raise HFConversionError("per-layer attention types (layer_types) are not supported for llama")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        **loom_base(hf, name, DEFAULTS),
        qkv_bias=bias,
        attn_out_bias=bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        hf_model_type="llama",
    )


FAMILY = Family(
    "llama",
    "LlamaForCausalLM",
    lambda cfg: (
        plain_problems(cfg, "llama", qkv_bias=ANY, attn_out_bias=ANY, mlp_bias=ANY)
        + same_bias(cfg, "llama")
        + rope_kinds(cfg, "llama", (*HF_ROPE_SCALINGS, "longrope"))
    ),
    _to_hf,
    _from_hf,
    matches=lambda cfg: True,  # the fallback: every other family is tried first
    priority=0,
)
