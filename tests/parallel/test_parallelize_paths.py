"""Context and expert parallel through the public path a trainer takes: `parallelize()` then
`compute_loss(..., mesh=mesh)` under `loss_context`, with nothing wired by hand.

The layout tests of parallel/context.py and parallel/expert.py check the techniques with custom training steps;
these check that the public entry points apply them (the sequence split and global positions inside compute_loss,
the experts' own FSDP units inside apply_fsdp) and train exactly like one process: losses at every step and the
final weights to 1e-4. Some labels are ignored (-100) unevenly across the cp ranks' chunks, so the cp runs only
match if compute_loss weights each rank's loss by its share of the real labels. The 2-rank cases run by default
(~40 s); the 4-rank mixes (cp x tp, cp x fsdp, ep inside a larger fsdp group) are marked slow.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from harness import RunSpec, Strategy, assert_runs_match, load_parallel_config, run_layouts, train
from model.config import MoEConfig

pytestmark = pytest.mark.distributed

# Adam's eps at the scale of the gradients, so a wrong gradient scale (a missing 1/cp) changes the weights.
ADAM_EPS = 1e-4
IGNORED_PREFIX = 6  # labels at positions < 6 are ignored: with cp=2 zig-zag, rank 0 loses 4 of 8, rank 1 2 of 8


class TrainerStep(Strategy):
    """The default harness setup (parallelize()) and a trainer's step: compute_loss with the mesh, the project's
    clip_grad_norm_, AdamW. `ignore_prefix` > 0 marks the first labels of every sequence as ignored."""

    def __init__(self, ignore_prefix: int = 0) -> None:
        self.ignore_prefix = ignore_prefix

    def train_step(self, spec, tokens, labels):
        from parallel import clip_grad_norm_, compute_loss, loss_context, scalar_loss

        if self.ignore_prefix:
            labels = labels.clone()
            labels[:, : self.ignore_prefix] = -100
        tokens, labels = self.local_batch(tokens, labels)
        self.optimizer.zero_grad(set_to_none=True)
        with loss_context(self.dims, self.pcfg):
            loss = compute_loss(self.model, tokens, labels, self.dims, self.pcfg, self.model_cfg, mesh=self.mesh)
            loss.backward()
        if spec.grad_clip > 0:
            clip_grad_norm_(self.model.parameters(), spec.grad_clip)
        self.optimizer.step()
        return self.average_over_dp(scalar_loss(loss))


CP_MODEL = {"n_kv_heads": 2, "sliding_window": 6, "attn_logit_softcap": 20.0, "z_loss_weight": 1e-3}
MOE = MoEConfig(num_experts=4, top_k=2, aux_loss_weight=0.0, router_z_loss_weight=0.001, num_shared_experts=1)
CASES = {  # name: (spec, strategy); all on 2 ranks so they share one spawn
    "cp-ring": (
        RunSpec(layout="cp", world_size=2, global_batch=2, eps=ADAM_EPS, grad_clip=1.0,
                overrides={"cp_method": "ring"}, model_overrides=CP_MODEL),
        TrainerStep(IGNORED_PREFIX),
    ),
    "cp-ulysses": (
        RunSpec(layout="cp", world_size=2, global_batch=2, eps=ADAM_EPS, grad_clip=1.0,
                overrides={"cp_method": "ulysses"}, model_overrides=CP_MODEL),
        TrainerStep(IGNORED_PREFIX),
    ),
    # ep=2 borrows the 2 FSDP ranks: experts split over ep, everything else (shared expert included) FSDP-sharded
    "ep-fsdp": (
        RunSpec(layout="ep", world_size=2, eps=ADAM_EPS, grad_clip=1.0,
                model_overrides={"moe": MOE, "hidden_dim": 64}),
        TrainerStep(),
    ),
}


# Slow (a second spawn of 4 ranks on 2 cores): cp under tensor parallel (the loss computed outside the model on
# vocab-sharded logits), cp with data parallel, and experts FSDP-sharded over the ranks outside the ep group.
CASES_4_RANKS = {
    "cp-ring-x-tp": (
        RunSpec(layout="cp", world_size=4, global_batch=2, eps=ADAM_EPS, grad_clip=1.0,
                overrides={"cp_method": "ring", "tp": 2, "dp_shard": 1}, model_overrides=CP_MODEL),
        TrainerStep(IGNORED_PREFIX),
    ),
    "cp-ulysses-x-fsdp": (
        RunSpec(layout="cp", world_size=4, global_batch=4, eps=ADAM_EPS, grad_clip=1.0,
                overrides={"cp_method": "ulysses"}, model_overrides=CP_MODEL),
        TrainerStep(IGNORED_PREFIX),
    ),
    "ep2-in-fsdp4": (
        RunSpec(layout="ep", world_size=4, eps=ADAM_EPS, grad_clip=1.0,
                model_overrides={"moe": MOE, "hidden_dim": 64}),
        TrainerStep(),
    ),
}


@pytest.fixture(scope="module")
def results():
    """Every case in one set of spawned processes (starting them costs more than the training)."""
    runs = run_layouts([spec for spec, _ in CASES.values()], [strategy for _, strategy in CASES.values()])
    return dict(zip(CASES, runs))


_REFERENCES: dict = {}


def reference(spec: RunSpec, strategy: TrainerStep):
    """The single-process run with the same step (and the same ignored labels)."""
    single = dataclasses.replace(spec, layout="single", world_size=1, overrides={})
    key = repr((single, strategy.ignore_prefix))
    if key not in _REFERENCES:
        _REFERENCES[key] = train(single, TrainerStep(strategy.ignore_prefix))
    return _REFERENCES[key]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_public_path_matches_single_process(results, case):
    got = results[case]
    if isinstance(got, str):
        pytest.fail(f"{case} failed:\n{got}")
    spec, strategy = CASES[case]
    assert_runs_match(got, reference(spec, strategy), rtol=1e-4)


@pytest.fixture(scope="module")
def results_4_ranks():
    runs = run_layouts([spec for spec, _ in CASES_4_RANKS.values()], [s for _, s in CASES_4_RANKS.values()])
    return dict(zip(CASES_4_RANKS, runs))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES_4_RANKS))
def test_public_path_mixed_layouts_match_single_process(results_4_ranks, case):
    got = results_4_ranks[case]
    if isinstance(got, str):
        pytest.fail(f"{case} failed:\n{got}")
    spec, strategy = CASES_4_RANKS[case]
    assert_runs_match(got, reference(spec, strategy), rtol=1e-4)


def test_compute_loss_under_cp_needs_the_mesh():
    from parallel import ParallelDims, compute_loss

    pcfg = load_parallel_config("cp")
    dims = ParallelDims.from_config(pcfg, 2)
    tokens = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="parallel.cp=2: compute_loss needs mesh="):
        compute_loss(torch.nn.Identity(), tokens, tokens, dims, pcfg)
