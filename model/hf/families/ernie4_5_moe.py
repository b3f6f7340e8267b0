"""ERNIE 4.5 MoE: what Loom's own `moe` config is (ungated shared experts, softmax routing, optional selection
bias), with interleaved RoPE rows."""

from __future__ import annotations

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.family import Family, TensorNames
from model.hf.family_kit import (
    ANY,
    check_activation,
    loom_base,
    moe_common_to_hf,
    moe_from_hf,
    moe_problems,
    placement_problems,
    plain_problems,
    shared_width_problems,
)

DEFAULTS = dict(max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=500000.0)


def _to_hf(cfg: ModelConfig) -> dict:
    moe = cfg.moe
    return {
        **moe_common_to_hf(cfg, FAMILY),
        "use_bias": False,
        "moe_num_experts": moe.num_experts,
        "moe_k": moe.top_k,
        "moe_intermediate_size": cfg.expert_hidden_dim,
        "moe_num_shared_experts": moe.num_shared_experts,
        "moe_layer_start_index": moe.first_dense,
        "moe_layer_end_index": cfg.n_layers - 1,
        "moe_layer_interval": moe.every,
        "moe_norm_min": 1e-12,
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    check_activation(hf, "hidden_act", ("silu",), "silu")
    if hf.get("use_bias"):
        raise HFConversionError("ERNIE use_bias=true (biased projections and head) is not supported")
    base = loom_base(hf, name, DEFAULTS)
    n = base["n_layers"]
    start, interval = hf.get("moe_layer_start_index", 1), hf.get("moe_layer_interval", 1)
    end = hf.get("moe_layer_end_index", -1)
    end = n - 1 if end in (None, -1) else end
    layers = [i for i in range(n) if (i + 1) % interval == 0 and start <= i <= end]
    moe = moe_from_hf(
        hf,
        n,
        layers,
        num_experts=hf.get("moe_num_experts", 64),
        top_k=hf.get("moe_k", 6),
        expert_hidden_dim=hf.get("moe_intermediate_size", 1536),
        num_shared_experts=hf.get("moe_num_shared_experts", 2),
        expert_bias=True,
        bias_update_rate=0.0,
    )
    return ModelConfig(**base, moe=moe, hf_model_type="ernie4_5_moe")


FAMILY = Family(
    "ernie4_5_moe",
    "Ernie4_5_MoeForCausalLM",
    lambda cfg: (
        plain_problems(cfg, "ernie4_5_moe", moe=ANY)
        + moe_problems(cfg, "ernie4_5_moe", num_shared_experts=ANY, expert_bias=ANY, every=ANY, first_dense=ANY)
        + shared_width_problems(cfg, "ernie4_5_moe")
        + placement_problems(cfg, "ernie4_5_moe")
    ),
    _to_hf,
    _from_hf,
    matches=lambda cfg: cfg.moe is not None and bool(cfg.moe.num_shared_experts or cfg.moe.expert_bias),
    priority=90,  # ungated shared experts or a selection bias, after the Qwen MoE families (higher)
    names=TensorNames(bias_name="moe_statics.e_score_correction_bias", bias_2d=True, interleaved_rope=True),
)
