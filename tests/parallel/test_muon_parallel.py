"""optim=muon trains like one process under FSDP, TP, EP and PP (2 ranks each), and resumes exactly under FSDP.

Muon orthogonalises whole matrices: a sharded parameter's Nesterov update is gathered, orthogonalised by every
rank and sliced back (launcher/muon.py); experts split by the expert dim are orthogonalised where they live. Ten
steps of each layout must give the single process's losses and final weights to 1e-5 (the iteration runs in
float32, so only reduction order differs). QK-clip runs in one FSDP case, with tau (0.1) below the largest logits
this model reaches, so heads are clipped: the per-head maxima are agreed over the ranks and each rank rescales the
rows of W_q/W_k it holds, which must equal one process clipping the whole matrices.
"""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
import torch
from harness import RunSpec, assert_runs_match, plan, planned_result

from launcher.config import MuonConfig
from model.config import MoEConfig

# Adam's eps at the gradients' scale (tests/parallel/test_expert_parallel.py): a wrong gradient scale shows.
ADAM_EPS = 1e-4
MUON = {"name": "muon", "muon": MuonConfig()}
MOE = {"moe": MoEConfig(num_experts=4, top_k=2, aux_loss_weight=0.0, router_z_loss_weight=0.001), "hidden_dim": 64}


def spec(layout: str, optim: dict = MUON, **fields) -> RunSpec:
    return RunSpec(layout=layout, world_size=2, steps=10, lr=1e-2, eps=ADAM_EPS, optim=dict(optim), **fields)


CASES = {
    "fsdp": plan(spec("fsdp")),
    "tp": plan(spec("tp")),
    "ep": plan(spec("ep", model_overrides=MOE)),
    "pp": plan(spec("pp")),  # one Muon + AdamW pair per stage module
    "fsdp_qk_clip": plan(spec("fsdp", {**MUON, "muon": MuonConfig(qk_clip_tau=0.1)})),
}


@pytest.mark.distributed
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", list(CASES))
def test_muon_layout_matches_single_process(reference_run, case):
    got, want = planned_result(CASES[case]), reference_run(CASES[case])
    assert_runs_match(got, want, rtol=1e-5)
    if case == "fsdp_qk_clip":  # the clip acted: the weights are not those of the unclipped run
        unclipped = planned_result(CASES["fsdp"]).params["layers.0.attention.wq.weight"]
        assert not torch.allclose(got.params["layers.0.attention.wq.weight"], unclipped, rtol=1e-3, atol=0)


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_muon_fsdp_resume_is_bitwise():
    """Five steps, a checkpoint (Muon's sharded momentum and AdamW's moments through DCP), five resumed steps: the
    weights equal ten uninterrupted steps bit for bit."""
    from harness import run_layouts

    base = CASES["fsdp"]
    with tempfile.TemporaryDirectory(prefix="loom-muon-resume-") as tmp:
        first = dataclasses.replace(base, steps=5, save_to=tmp)
        second = dataclasses.replace(base, steps=5, start_step=5, load_from=tmp)
        head = run_layouts([first])[0]
        assert not isinstance(head, str), head
        tail = run_layouts([second])[0]
        assert not isinstance(tail, str), tail
    whole = planned_result(base)
    assert head.losses + tail.losses == whole.losses
    for name, value in whole.params.items():
        assert torch.equal(tail.params[name], value), name
