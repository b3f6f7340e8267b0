"""DeepSeek-V2: multi-head latent attention with softmax-routed MoE (greedy or group-limited greedy top-k)."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.family import Family, TensorNames
from model.hf.family_kit import deepseek_from_hf, deepseek_problems, deepseek_to_hf


def _problems(cfg: ModelConfig) -> list[str]:
    problems = deepseek_problems(cfg, "deepseek_v2", norm_topk_prob=False)
    if cfg.moe is not None and cfg.moe.n_groups > 1 and cfg.moe.group_score != "max":
        problems.append(
            "deepseek_v2's group-limited routing scores a group by its best expert: set moe.group_score=max"
        )
    return problems


def _to_hf(cfg: ModelConfig) -> dict:
    out = deepseek_to_hf(cfg, FAMILY)
    out["topk_method"] = "group_limited_greedy" if cfg.moe.n_groups > 1 else "greedy"
    return out


def _from_hf(hf: dict, name: str) -> ModelConfig:
    method = hf.get("topk_method", "greedy")
    if method not in ("greedy", "group_limited_greedy"):
        raise HFConversionError(f"deepseek_v2 topk_method={method!r} is not supported (greedy, group_limited_greedy)")
    if method == "greedy":
        hf = {**hf, "n_group": 1, "topk_group": 1}
    # transformers' DeepSeek-V2 router never renormalises the top-k weights, whatever norm_topk_prob says.
    return deepseek_from_hf(hf, name, norm_topk_prob=False, group_score="max")


FAMILY = Family(
    "deepseek_v2",
    "DeepseekV2ForCausalLM",
    _problems,
    _to_hf,
    _from_hf,
    matches=lambda cfg: cfg.mla is not None,
    priority=120,  # latent attention that DeepSeek-V3 (higher) did not claim
    names=TensorNames(interleaved_rope=True),
)
