"""Context and expert parallel through the production torch train module, mixed with clipping, z-loss and
ignored labels: `parallelize()` then `compute_loss` under `loss_context`, as `python -m launcher.train` runs them.

They check that the public entry points apply the techniques (the sequence split and global positions inside
compute_loss, the experts' own FSDP units inside apply_fsdp) and train exactly like one process: losses at every step
and the final weights to 1e-4. Some labels are ignored (-100) unevenly across the cp ranks' chunks, so the cp runs only
match if compute_loss weights each rank's loss by its share of the real labels. The 2-rank cases run by default (~40 s);
the 4-rank mixes (cp x tp, cp x fsdp, ep inside a larger fsdp group) are marked slow.
"""

from __future__ import annotations

import pytest
from harness import RunSpec, assert_runs_match, run_layouts

from model.config import MoEConfig

pytestmark = pytest.mark.distributed

# Adam's eps at the scale of the gradients, so a wrong gradient scale (a missing 1/cp) changes the weights.
ADAM_EPS = 1e-4
IGNORED_PREFIX = 6  # labels at positions < 6 are ignored: with cp=2 zig-zag, rank 0 loses 4 of 8, rank 1 2 of 8


CP_MODEL = {"n_kv_heads": 2, "sliding_window": 6, "attn_logit_softcap": 20.0, "z_loss_weight": 1e-3}
MOE = MoEConfig(num_experts=4, top_k=2, aux_loss_weight=0.0, router_z_loss_weight=0.001, num_shared_experts=1)
CASES = {  # name: spec; all on 2 ranks so they share one spawn
    "cp-ring": RunSpec(
        layout="cp",
        world_size=2,
        global_batch=2,
        eps=ADAM_EPS,
        grad_clip=1.0,
        overrides={"cp_method": "ring"},
        model_overrides=CP_MODEL,
        ignore_prefix=IGNORED_PREFIX,
    ),
    "cp-ulysses": RunSpec(
        layout="cp",
        world_size=2,
        global_batch=2,
        eps=ADAM_EPS,
        grad_clip=1.0,
        overrides={"cp_method": "ulysses"},
        model_overrides=CP_MODEL,
        ignore_prefix=IGNORED_PREFIX,
    ),
    # ep=2 borrows the 2 FSDP ranks: experts split over ep, everything else (shared expert included) FSDP-sharded
    "ep-fsdp": RunSpec(
        layout="ep", world_size=2, eps=ADAM_EPS, grad_clip=1.0, model_overrides={"moe": MOE, "hidden_dim": 64}
    ),
}


# Slow (a second spawn of 4 ranks on 2 cores): cp under tensor parallel (the loss computed outside the model on
# vocab-sharded logits), cp with data parallel, and experts FSDP-sharded over the ranks outside the ep group.
CASES_4_RANKS = {
    "cp-ring-x-tp": RunSpec(
        layout="cp",
        world_size=4,
        global_batch=2,
        eps=ADAM_EPS,
        grad_clip=1.0,
        overrides={"cp_method": "ring", "tp": 2, "dp_shard": 1},
        model_overrides=CP_MODEL,
        ignore_prefix=IGNORED_PREFIX,
    ),
    "cp-ulysses-x-fsdp": RunSpec(
        layout="cp",
        world_size=4,
        global_batch=4,
        eps=ADAM_EPS,
        grad_clip=1.0,
        overrides={"cp_method": "ulysses"},
        model_overrides=CP_MODEL,
        ignore_prefix=IGNORED_PREFIX,
    ),
    "ep2-in-fsdp4": RunSpec(
        layout="ep", world_size=4, eps=ADAM_EPS, grad_clip=1.0, model_overrides={"moe": MOE, "hidden_dim": 64}
    ),
}


@pytest.fixture(scope="module")
def results():
    """Every case in one set of spawned processes (starting them costs more than the training)."""
    return dict(zip(CASES, run_layouts(list(CASES.values()))))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_public_path_matches_single_process(results, reference_run, case):
    got = results[case]
    if isinstance(got, str):
        pytest.fail(f"{case} failed:\n{got}")
    assert_runs_match(got, reference_run(CASES[case]), rtol=1e-4)


@pytest.fixture(scope="module")
def results_4_ranks():
    return dict(zip(CASES_4_RANKS, run_layouts(list(CASES_4_RANKS.values()))))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES_4_RANKS))
def test_public_path_mixed_layouts_match_single_process(results_4_ranks, reference_run, case):
    got = results_4_ranks[case]
    if isinstance(got, str):
        pytest.fail(f"{case} failed:\n{got}")
    assert_runs_match(got, reference_run(CASES_4_RANKS[case]), rtol=1e-4)
