"""OLMo 2: norms on the branch outputs (not the inputs) and full-width q/k RMSNorm."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family
from model.hf.family_kit import (
    ANY,
    check_activation,
    common_hf_fields,
    loom_base,
    plain_problems,
    rope_kinds,
    same_bias,
)

DEFAULTS = dict(max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        **loom_base(hf, name, DEFAULTS),
        norm_position="branch_output",
        qk_norm=True,
        qk_norm_scope="full",
        qkv_bias=bias,
        attn_out_bias=bias,
        hf_model_type="olmo2",
    )


FAMILY = Family(
    "olmo2",
    "Olmo2ForCausalLM",
    lambda cfg: (
        plain_problems(
            cfg,
            "olmo2",
            norm_position="branch_output",
            qk_norm=True,
            qk_norm_scope="full",
            qkv_bias=ANY,
            attn_out_bias=ANY,
        )
        + same_bias(cfg, "olmo2")
        + rope_kinds(cfg, "olmo2")
    ),
    lambda cfg: {**common_hf_fields(cfg, FAMILY), "attention_bias": bool(cfg.qkv_bias)},
    _from_hf,
    matches=lambda cfg: cfg.norm_position == "branch_output",
    priority=50,
)
