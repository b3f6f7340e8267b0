"""The model's speed options under the layouts that compute outside the plain model path, to 1e-4 against one
process:

- model.fused_projections under tensor parallel (with and without sequence parallel), FSDP and FSDP x TP, against
  one process with split projections: the fused forward concatenates each rank's own shards, and the parameters
  (names, shapes, sharding) are those of the split model.
- the loss chunked outside the model (model.loss_chunk_size smaller than a batch) on tensor parallel's
  vocab-sharded logits (with z-loss and the final-logit softcap) and on the last pipeline stage."""

import dataclasses

import pytest
from harness import RunSpec, assert_runs_match, plan, planned_result

pytestmark = pytest.mark.distributed

# Biases on every projection and per-head QK-norm: the parts a fused tensor-parallel matmul could misalign.
FUSED = {"fused_projections": True, "qkv_bias": True, "mlp_bias": True, "qk_norm": True}
LAYOUTS = {
    "tp-sp": plan(RunSpec(layout="tp", world_size=2, model_overrides=FUSED, grad_clip=1.0)),
    "tp-plain": plan(
        RunSpec(
            layout="tp",
            world_size=2,
            overrides={"sequence_parallel": False, "loss_parallel": False},
            model_overrides={**FUSED, "mlp_type": "geglu"},
            grad_clip=1.0,
        )
    ),
    "fsdp": plan(RunSpec(layout="fsdp", world_size=2, model_overrides=FUSED, grad_clip=1.0)),
    "fsdp_tp": plan(RunSpec(layout="fsdp_tp", world_size=4, model_overrides=FUSED, grad_clip=1.0)),
}
# 4 sequences x 16 tokens per step: chunks of 24 tokens leave a short last chunk.
CHUNKED = {"loss_chunk_size": 24, "z_loss_weight": 1e-3, "final_logit_softcap": 30.0}
CHUNKED_LOSS = {
    "tp-loss_parallel": plan(RunSpec(layout="tp", world_size=2, model_overrides=CHUNKED, grad_clip=1.0)),
    "pp": plan(RunSpec(layout="pp", world_size=2, model_overrides=CHUNKED, grad_clip=1.0)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_fused_layout_matches_split_single_process(reference_run, name):
    spec = LAYOUTS[name]
    split = {k: v for k, v in spec.model_overrides.items() if k != "fused_projections"}
    assert_runs_match(planned_result(spec), reference_run(dataclasses.replace(spec, model_overrides=split)), rtol=1e-4)


@pytest.mark.parametrize("name", list(CHUNKED_LOSS))
def test_loss_chunked_outside_the_model_matches_single_process(reference_run, name):
    spec = CHUNKED_LOSS[name]
    assert_runs_match(planned_result(spec), reference_run(spec), rtol=1e-4)
