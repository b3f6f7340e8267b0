"""Mistral: a Llama decoder with sliding-window attention on every layer."""

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
)

DEFAULTS = dict(max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False, sliding_window=4096)


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    window = hf["sliding_window"] if "sliding_window" in hf else DEFAULTS["sliding_window"]
    return ModelConfig(**loom_base(hf, name, DEFAULTS), sliding_window=window, hf_model_type="mistral")


FAMILY = Family(
    "mistral",
    "MistralForCausalLM",
    lambda cfg: plain_problems(cfg, "mistral", sliding_window=ANY) + rope_kinds(cfg, "mistral"),
    lambda cfg: {**common_hf_fields(cfg, FAMILY), "sliding_window": cfg.sliding_window},
    _from_hf,
    matches=lambda cfg: cfg.sliding_window is not None,
    priority=10,
)
