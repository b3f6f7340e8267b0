"""Phi-3: a Llama decoder with fused qkv and gate/up tensors and LongRoPE scaling."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family, TensorNames
from model.hf.family_kit import (
    ANY,
    check_activation,
    common_hf_fields,
    loom_base,
    plain_problems,
    rope_kinds,
)

DEFAULTS = dict(max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _to_hf(cfg: ModelConfig) -> dict:
    out = common_hf_fields(cfg, FAMILY)
    out["rope_parameters"] = {**out["rope_parameters"], "partial_rotary_factor": 1.0}
    s = cfg.rope_scaling
    original = s.original_max_seq_len if s.type == "longrope" and not s.is_plain else cfg.max_seq_len
    return {
        **out,
        "original_max_position_embeddings": original,
        "sliding_window": cfg.sliding_window,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    return ModelConfig(**loom_base(hf, name, DEFAULTS), sliding_window=hf.get("sliding_window"), hf_model_type="phi3")


FAMILY = Family(
    "phi3",
    "Phi3ForCausalLM",
    lambda cfg: plain_problems(cfg, "phi3", sliding_window=ANY) + rope_kinds(cfg, "phi3", ("longrope",)),
    _to_hf,
    _from_hf,
    matches=lambda cfg: cfg.rope_scaling.type == "longrope",
    priority=20,  # before mistral: a LongRoPE config with a sliding window is Phi-3
    names=TensorNames(fused_qkv=True, fused_gate_up=True),
)
