"""Mixtral: a Mistral decoder whose every MLP is a top-k softmax mixture of experts, no shared expert."""

from __future__ import annotations

from model.blocks.moe import EXPERT_WEIGHTS
from model.config import ModelConfig
from model.hf.family import Family, TensorNames
from model.hf.family_kit import (
    ANY,
    check_activation,
    loom_base,
    moe_common_to_hf,
    moe_from_hf,
    moe_problems,
    plain_problems,
)

DEFAULTS = dict(max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=1e6)


def _to_hf(cfg: ModelConfig) -> dict:
    return {
        **moe_common_to_hf(cfg, FAMILY),
        "intermediate_size": cfg.expert_hidden_dim,
        "num_local_experts": cfg.moe.num_experts,
        "num_experts_per_tok": cfg.moe.top_k,
        "router_jitter_noise": 0.0,
        "sliding_window": cfg.sliding_window,
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, DEFAULTS)
    moe = moe_from_hf(
        hf,
        base["n_layers"],
        list(range(base["n_layers"])),
        num_experts=hf.get("num_local_experts", 8),
        top_k=hf.get("num_experts_per_tok", 2),
        expert_hidden_dim=base["hidden_dim"],
    )
    return ModelConfig(**base, sliding_window=hf.get("sliding_window"), moe=moe, hf_model_type="mixtral")


FAMILY = Family(
    "mixtral",
    "MixtralForCausalLM",
    lambda cfg: plain_problems(cfg, "mixtral", moe=ANY, sliding_window=ANY) + moe_problems(cfg, "mixtral"),
    _to_hf,
    _from_hf,
    matches=lambda cfg: cfg.moe is not None,
    priority=80,  # the MoE decoder that no more specific MoE family (higher) claimed
    names=TensorNames(moe_prefix="block_sparse_moe", expert_names=EXPERT_WEIGHTS),  # Mixtral's names are ours
)
