"""Expert parallel trains an MoE model exactly like one process.

Two ranks read different halves of each batch and hold half of the experts each; tokens reach their experts by
all-to-all. Non-expert gradients are averaged over the ranks and expert gradients (sums over the ranks' losses) divided
by the same degree by FSDP2 (fully_shard_experts inside parallel.fsdp.apply_fsdp), as the production train module lays
it out; losses at every step and the final (full) weights must match the single-process run to 1e-4. The Switch
load-balancing loss is switched off: it is a non-linear function of the whole batch, so no data-parallel layout
reproduces it from per-rank halves (the router z-loss, a per-token mean, stays on).
"""

from __future__ import annotations

import pytest
import torch
from harness import RunSpec, assert_runs_match, run_layouts

from model.config import MoEConfig

# Adam's eps at the scale of the gradients, so an update depends on the gradient's size and a wrong gradient
# scale (a missing 1/dp, 1/cp or 1/microbatches) changes the weights; with eps=1e-8 Adam would hide it.
ADAM_EPS = 1e-4

MOE = {"num_experts": 4, "top_k": 2, "aux_loss_weight": 0.0, "router_z_loss_weight": 0.001}


def _spec(shared_experts: int) -> RunSpec:
    return RunSpec(
        layout="ep",
        world_size=2,
        steps=10,
        global_batch=4,
        seq_len=16,
        eps=ADAM_EPS,
        model_overrides={"moe": MoEConfig(**MOE, num_shared_experts=shared_experts), "hidden_dim": 64},
    )


CASES = {  # name: spec; experts over ep=2, everything else (and the experts over the rest) FSDP-sharded
    "ep-fsdp": _spec(0),
    "ep-fsdp-shared-expert": _spec(1),
}


@pytest.fixture(scope="module")
def ep_results():
    """Both cases in one set of spawned processes (starting them costs more than the training)."""
    results = run_layouts(list(CASES.values()))
    return dict(zip(CASES, results))


@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_expert_parallel_matches_single_process(ep_results, reference_run, case):
    got = ep_results[case]
    if isinstance(got, str):
        pytest.fail(f"{case} failed:\n{got}")
    assert_runs_match(got, reference_run(CASES[case]), rtol=1e-4)


def test_regroup_index_orders_tokens_by_expert_then_source():
    from parallel.expert import _regroup_index

    # 2 sources x 2 experts: source 0 sent [e0: 2 tokens, e1: 1], source 1 sent [e0: 1, e1: 2]
    counts = torch.tensor([[2, 1], [1, 2]])
    # received rows: s0e0 s0e0 s0e1 s1e0 s1e1 s1e1 -> expert-major: s0e0 s0e0 s1e0 | s0e1 s1e1 s1e1
    assert _regroup_index(counts).tolist() == [0, 1, 3, 2, 4, 5]
    assert _regroup_index(torch.tensor([[0, 0], [0, 3]])).tolist() == [0, 1, 2]
