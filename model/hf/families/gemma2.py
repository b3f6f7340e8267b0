"""Gemma 2: sandwich norms with unit offset, scaled embeddings, GeGLU, logit soft-capping, sliding window on every
other layer."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family
from model.hf.family_kit import (
    GEMMA,
    gemma_common_from_hf,
    gemma_common_to_hf,
    looks_like_gemma,
    loom_base,
    plain_problems,
    rope_kinds,
    same_bias,
)

DEFAULTS = dict(
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    sliding_window=4096,
    head_dim=256,
    query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
)


def _from_hf(hf: dict, name: str) -> ModelConfig:
    base = loom_base(hf, name, DEFAULTS)
    types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(base["n_layers"])]
    return ModelConfig(**gemma_common_from_hf(hf, name, DEFAULTS, base, types), hf_model_type="gemma2")


FAMILY = Family(
    "gemma2",
    "Gemma2ForCausalLM",
    lambda cfg: plain_problems(cfg, "gemma2", **GEMMA) + same_bias(cfg, "gemma2") + rope_kinds(cfg, "gemma2"),
    lambda cfg: gemma_common_to_hf(cfg, FAMILY),
    _from_hf,
    matches=looks_like_gemma,
    priority=60,  # a dense decoder with any of Gemma's switches that Gemma 3 (higher) did not claim
)
