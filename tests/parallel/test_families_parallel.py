"""The new families' blocks under each parallel layout train like one process (losses at every step and final
weights to 1e-4): a tiny DeepSeek-V3-like model (multi-head latent attention, grouped sigmoid routing scaled by
2.5, a shared expert, a selection bias, a dense first layer) and a tiny Qwen3-MoE (per-head QK-norm, top-2 of 4
renormalised), each under FSDP over 2 ranks, tensor + sequence parallel over 2 (latent attention's up-projections
and the experts' hidden dimension split, loss_parallel) and expert parallel over 2; and the DeepSeek-V3-like model
with one multi-token-prediction module (an MoE layer) under FSDP, DDP, DeepSpeed ZeRO-2 and ZeRO-3, and
expert parallel over 2 ranks.

The router losses are off: the Switch load-balancing loss is a non-linear function of the whole batch, which no
data-parallel layout reproduces from per-rank halves, and tensor parallel computes the loss outside the model,
without router losses (parallel.dims refuses them there; the expert-parallel suite covers the z-loss). Adam's eps
is at the gradients' scale so a wrong gradient scale shows in the weights.
"""

from __future__ import annotations

import pytest
from harness import RunSpec, assert_runs_match, plan, planned_result

pytestmark = pytest.mark.distributed

ADAM_EPS = 1e-4
DEEPSEEK_V3_LIKE = {
    "n_kv_heads": None,
    "mla": {"kv_lora_rank": 16, "q_lora_rank": 24, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12},
    "moe": {
        "num_experts": 4,
        "top_k": 2,
        "num_shared_experts": 1,
        "expert_hidden_dim": 32,
        "score_func": "sigmoid",
        "n_groups": 2,
        "topk_groups": 1,
        "group_score": "top2_sum",
        "routed_scaling_factor": 2.5,
        "expert_bias": True,
        "aux_loss_weight": 0.0,
        "router_z_loss_weight": 0.0,
        "first_dense": 1,
    },
}
QWEN3_MOE_LIKE = {
    "qk_norm": True,
    "head_dim": 16,
    "moe": {
        "num_experts": 4,
        "top_k": 2,
        "expert_hidden_dim": 32,
        "norm_topk_prob": True,
        "aux_loss_weight": 0.0,
        "router_z_loss_weight": 0.0,
    },
}
MODELS = {"deepseek_v3_like": DEEPSEEK_V3_LIKE, "qwen3_moe_like": QWEN3_MOE_LIKE}
LAYOUTS = ("fsdp", "tp", "ep")
SPECS = {
    (model, layout): plan(
        RunSpec(
            layout=layout,
            world_size=2,
            steps=3,
            global_batch=4,
            seq_len=16,
            eps=ADAM_EPS,
            grad_clip=1.0,
            model_overrides=overrides,
        )
    )
    for model, overrides in MODELS.items()
    for layout in LAYOUTS
}

# Multi-token prediction (DeepSeek-V3's training objective) on the data-parallel layouts it runs with.
MTP_SPECS = {
    layout: plan(
        RunSpec(
            layout=layout,
            world_size=2,
            steps=3,
            global_batch=4,
            seq_len=16,
            eps=ADAM_EPS,
            grad_clip=1.0,
            model_overrides={**DEEPSEEK_V3_LIKE, "mtp_depth": 1},
        )
    )
    for layout in ("fsdp", "ddp", "zero2", "zero3", "ep")
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model, layout", list(SPECS))
def test_layout_matches_single_process(reference_run, model, layout):
    spec = SPECS[(model, layout)]
    assert_runs_match(planned_result(spec), reference_run(spec), rtol=1e-4)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", list(MTP_SPECS))
def test_multi_token_prediction_matches_single_process(reference_run, layout):
    spec = MTP_SPECS[layout]
    assert_runs_match(planned_result(spec), reference_run(spec), rtol=1e-4)
