"""Qwen3-MoE: Qwen3's decoder (per-head q/k norms) with top-k softmax MoE layers and no shared expert."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family
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
    same_bias,
)


def _to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.moe
    return {
        **moe_common_to_hf(cfg, FAMILY),
        **qwen_sliding_fields(cfg),
        **qwen_moe_layers_to_hf(cfg),
        "num_experts": moe.num_experts,
        "num_local_experts": moe.num_experts,
        "num_experts_per_tok": moe.top_k,
        "moe_intermediate_size": cfg.expert_hidden_dim,
        "norm_topk_prob": moe.norm_topk_prob,
        "attention_bias": bool(cfg.qkv_bias),
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    base = loom_base(hf, name, {**QWEN_DEFAULTS, "head_dim": 128})
    n = base["n_layers"]
    window, pattern = qwen_windows(hf, n)
    moe = moe_from_hf(
        hf,
        n,
        qwen_moe_layers_from_hf(hf, n),
        num_experts=hf.get("num_experts", hf.get("num_local_experts", 128)),
        top_k=hf.get("num_experts_per_tok", 8),
        expert_hidden_dim=hf.get("moe_intermediate_size", 768),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
    )
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        **base,
        qkv_bias=bias,
        attn_out_bias=bias,
        qk_norm=True,
        qk_norm_scope="head",
        sliding_window=window,
        sliding_window_pattern=pattern,
        moe=moe,
        hf_model_type="qwen3_moe",
    )


FAMILY = Family(
    "qwen3_moe",
    "Qwen3MoeForCausalLM",
    lambda cfg: (
        plain_problems(
            cfg,
            "qwen3_moe",
            moe=ANY,
            qk_norm=True,
            qk_norm_scope="head",
            qkv_bias=ANY,
            attn_out_bias=ANY,
            sliding_window=ANY,
            sliding_window_pattern=ANY,
        )
        + same_bias(cfg, "qwen3_moe")
        + moe_problems(cfg, "qwen3_moe", norm_topk_prob=ANY, every=ANY, first_dense=ANY)
        + placement_problems(cfg, "qwen3_moe")
    ),
    _to_hf,
    _from_hf,
    matches=lambda cfg: cfg.moe is not None and cfg.qk_norm,
    priority=100,  # an MoE decoder with q/k norms, after the latent-attention and gated-shared-expert families
)
