"""Qwen2-MoE: Qwen2's decoder with MoE layers that add one sigmoid-gated shared expert."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family, TensorNames
from model.hf.family_kit import (
    ANY,
    QWEN_DEFAULTS,
    check_activation,
    loom_base,
    moe_common_to_hf,
    moe_from_hf,
    moe_problems,
    placement_problems,
    plain_problems,
    qwen_moe_layers_from_hf,
    qwen_moe_layers_to_hf,
    qwen_sliding_fields,
    qwen_windows,
)


def _to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.moe
    return {
        **moe_common_to_hf(cfg, FAMILY),
        **qwen_sliding_fields(cfg),
        **qwen_moe_layers_to_hf(cfg),
        "num_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": cfg.expert_hidden_dim,
        "shared_expert_intermediate_size": cfg.shared_experts_hidden_dim,
        "norm_topk_prob": moe.norm_topk_prob,
        "qkv_bias": bool(cfg.qkv_bias),
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, QWEN_DEFAULTS)
    n = base["n_layers"]
    window, pattern = qwen_windows(hf, n)
    moe = moe_from_hf(
        hf,
        n,
        qwen_moe_layers_from_hf(hf, n),
        num_experts=hf.get("num_experts", 60),
        top_k=hf.get("num_experts_per_tok", 4),
        expert_hidden_dim=hf.get("moe_intermediate_size", 1408),
        num_shared_experts=1,
        shared_expert_hidden_dim=hf.get("shared_expert_intermediate_size", 5632),
        shared_expert_gate=True,
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
    )
    return ModelConfig(
        **base,
        qkv_bias=bool(hf.get("qkv_bias", True)),
        sliding_window=window,
        sliding_window_pattern=pattern,
        moe=moe,
        hf_model_type="qwen2_moe",
    )


FAMILY = Family(
    "qwen2_moe",
    "Qwen2MoeForCausalLM",
    lambda cfg: (
        plain_problems(cfg, "qwen2_moe", moe=ANY, qkv_bias=ANY, sliding_window=ANY, sliding_window_pattern=ANY)
        + moe_problems(
            cfg,
            "qwen2_moe",
            num_shared_experts=ANY,
            shared_expert_gate=True,
            norm_topk_prob=ANY,
            every=ANY,
            first_dense=ANY,
        )
        + (
            ["qwen2_moe has one gated shared expert: set moe.num_shared_experts >= 1"]
            if cfg.moe is not None and not cfg.moe.num_shared_experts
            else []
        )
        + placement_problems(cfg, "qwen2_moe")
    ),
    _to_hf,
    _from_hf,
    matches=lambda cfg: cfg.moe is not None and cfg.moe.shared_expert_gate,
    priority=110,  # a gated shared expert is Qwen2-MoE's alone (only the latent-attention families come first)
    names=TensorNames(shared_name="shared_expert"),
)
