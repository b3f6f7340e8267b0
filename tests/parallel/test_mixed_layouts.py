"""Pipeline parallel combined with the other engineer's FSDP2 and tensor parallel, applied to each stage by
parallelize_stage: pp x fsdp (4 ranks) and pp x fsdp x tp (8 ranks) must train like one process (1e-4).
"""

from __future__ import annotations

import pytest
from harness import RunSpec, assert_runs_match, run_layout

# Adam's eps at the scale of the gradients, so an update depends on the gradient's size and a wrong gradient
# scale (a missing 1/dp, 1/cp or 1/microbatches) changes the weights; with eps=1e-8 Adam would hide it.
ADAM_EPS = 1e-4

LAYOUTS = {
    # layout: (world size, ParallelConfig overrides)
    "pp_fsdp": (4, {}),
    "3d": (8, {}),
}


@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_pipeline_mixed_layout_matches_single_process(reference_run, layout):
    world_size, overrides = LAYOUTS[layout]
    spec = RunSpec(
        layout=layout, world_size=world_size, steps=10, global_batch=4, seq_len=16, eps=ADAM_EPS, overrides=overrides
    )
    assert_runs_match(run_layout(spec), reference_run(spec), rtol=1e-4)
