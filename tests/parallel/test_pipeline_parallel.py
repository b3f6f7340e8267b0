"""Pipeline parallel trains exactly like one process, with every schedule.

Each schedule runs the same tiny model for 10 steps through the production pipeline train module; the per-step
loss (mean over microbatches, read on the last stage) and every final parameter gathered from the stages must match
the single-process run to 1e-4. The layer split and stage placement are unit-tested on their own; what pipeline
parallel refuses is tested in tests/launcher/test_layout_rules.py.
"""

from __future__ import annotations

import pytest
from harness import RunSpec, assert_runs_match, run_layouts

# Adam's eps at the scale of the gradients, so an update depends on the gradient's size and a wrong gradient
# scale (a missing 1/dp, 1/cp or 1/microbatches) changes the weights; with eps=1e-8 Adam would hide it.
ADAM_EPS = 1e-4

SCHEDULE_CASES = {
    # schedule: (ParallelConfig overrides, model overrides)
    "GPipe": ({"pp_schedule": "GPipe"}, {}),
    "1F1B": ({"pp_schedule": "1F1B"}, {}),
    "Interleaved1F1B": ({"pp_schedule": "Interleaved1F1B", "pp_stages_per_rank": 2}, {"n_layers": 4}),
    "InterleavedZeroBubble": ({"pp_schedule": "InterleavedZeroBubble", "pp_stages_per_rank": 2}, {"n_layers": 4}),
    "ZBVZeroBubble": ({"pp_schedule": "ZBVZeroBubble", "pp_stages_per_rank": 2}, {"n_layers": 4}),
}


SPECS = {
    name: RunSpec(
        layout="pp",
        world_size=2,
        steps=10,
        global_batch=4,
        seq_len=16,
        eps=ADAM_EPS,
        overrides=overrides,
        model_overrides=model_overrides,
    )
    for name, (overrides, model_overrides) in SCHEDULE_CASES.items()
}


@pytest.fixture(scope="module")
def schedule_results():
    """Every schedule in one set of spawned processes (starting them costs more than the training)."""
    return dict(zip(SPECS, run_layouts(list(SPECS.values()))))


@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.parametrize("schedule", list(SCHEDULE_CASES))
def test_pipeline_schedule_matches_single_process(schedule_results, reference_run, schedule):
    got = schedule_results[schedule]
    if isinstance(got, str):
        pytest.fail(f"schedule {schedule} failed:\n{got}")
    assert_runs_match(got, reference_run(SPECS[schedule]), rtol=1e-4)


def test_balanced_split_puts_the_boundary_where_the_cost_is_even():
    from parallel.stage_plan import balanced_layer_split

    assert balanced_layer_split([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    # a heavy output head on the last stage pushes layers to the first
    assert balanced_layer_split([1, 1, 1, 1], 2, last_stage_extra=2) == [range(0, 3), range(3, 4)]
    # uneven layers (e.g. MoE every other layer)
    assert balanced_layer_split([1, 5, 1, 5, 1, 5], 3) == [range(0, 2), range(2, 4), range(4, 6)]
    with pytest.raises(ValueError, match="every stage needs a layer"):
        balanced_layer_split([1, 1], 3)


def test_layer_split_from_config_and_stage_placement():
    from parallel.stage_plan import parse_layer_split, stage_ids_for_rank

    assert parse_layer_split("0-2,3-3", 4, 2) == [range(0, 3), range(3, 4)]
    for bad in ("0-1,3-3", "0-3", "a-b,c"):
        with pytest.raises(ValueError, match="pp_layer_split"):
            parse_layer_split(bad, 4, 2)
    assert stage_ids_for_rank(0, 2, 2, "ZBVZeroBubble") == [0, 3]
    assert stage_ids_for_rank(1, 2, 2, "Interleaved1F1B") == [1, 3]
    assert stage_ids_for_rank(1, 2, 1, "1F1B") == [1]


def test_split_stage_keeps_parameter_names():
    from harness import tiny_model_config

    import model as model_pkg
    from parallel.pipeline import split_stage

    cfg = tiny_model_config(n_layers=4)
    full = set(dict(model_pkg.build(cfg).named_parameters()))
    first = split_stage(model_pkg.build(cfg), range(0, 2), True, False)
    last = split_stage(model_pkg.build(cfg), range(2, 4), False, True)
    first_names, last_names = set(dict(first.named_parameters())), set(dict(last.named_parameters()))
    assert not first_names & last_names and first_names | last_names == full
    assert "tok_embeddings.weight" in first_names and "output.weight" in last_names
