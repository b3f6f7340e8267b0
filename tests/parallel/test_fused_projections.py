"""model.fused_projections under tensor parallel (with and without sequence parallel), FSDP and FSDP x TP trains
like one process with split projections, to 1e-4: the fused forward concatenates each rank's own shards, and the
parameters (names, shapes, sharding) are those of the split model."""
import dataclasses

import pytest
from harness import RunSpec, assert_runs_match, plan, planned_result

pytestmark = pytest.mark.distributed

# Biases on every projection and per-head QK-norm: the parts a fused tensor-parallel matmul could misalign.
FUSED = {"fused_projections": True, "qkv_bias": True, "mlp_bias": True, "qk_norm": True}
LAYOUTS = {
    "tp-sp": plan(RunSpec(layout="tp", world_size=2, model_overrides=FUSED, grad_clip=1.0)),
    "tp-plain": plan(RunSpec(layout="tp", world_size=2, overrides={"sequence_parallel": False,
                                                                   "loss_parallel": False},
                             model_overrides={**FUSED, "mlp_type": "geglu"}, grad_clip=1.0)),
    "fsdp": plan(RunSpec(layout="fsdp", world_size=2, model_overrides=FUSED, grad_clip=1.0)),
    "fsdp_tp": plan(RunSpec(layout="fsdp_tp", world_size=4, model_overrides=FUSED, grad_clip=1.0)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_fused_layout_matches_split_single_process(reference_run, name):
    spec = LAYOUTS[name]
    split = {k: v for k, v in spec.model_overrides.items() if k != "fused_projections"}
    assert_runs_match(planned_result(spec), reference_run(dataclasses.replace(spec, model_overrides=split)),
                      rtol=1e-4)
