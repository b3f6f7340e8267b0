"""DeepSeek-V3: multi-head latent attention with sigmoid-scored, bias-selected MoE routing and multi-token
prediction modules."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.family import Family, TensorNames
from model.hf.family_kit import ANY, deepseek_from_hf, deepseek_problems, deepseek_to_hf


def _to_hf(cfg: ModelConfig) -> dict:
    return {**deepseek_to_hf(cfg, FAMILY), "rope_interleave": True, "num_nextn_predict_layers": cfg.mtp_depth}


def _from_hf(hf: dict, name: str) -> ModelConfig:
    return deepseek_from_hf(
        hf,
        name,
        score_func="sigmoid",
        group_score="top2_sum",
        expert_bias=True,
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
    )


def _matches(cfg: ModelConfig) -> bool:
    moe = cfg.moe
    return cfg.mla is not None and moe is not None and (moe.score_func == "sigmoid" or moe.expert_bias)


FAMILY = Family(
    "deepseek_v3",
    "DeepseekV3ForCausalLM",
    lambda cfg: deepseek_problems(
        cfg,
        "deepseek_v3",
        score_func="sigmoid",
        norm_topk_prob=ANY,
        expert_bias=ANY,
        group_score="top2_sum" if cfg.moe is not None and cfg.moe.n_groups > 1 else ANY,
    ),
    _to_hf,
    _from_hf,
    matches=_matches,
    priority=130,  # after GPT-2 only: latent attention with V3's router is more specific than DeepSeek-V2
    names=TensorNames(
        bias_name="gate.e_score_correction_bias",
        interleaved_rope=True,
        interleave_key="rope_interleave",
        mtp_layers=True,
    ),
)
