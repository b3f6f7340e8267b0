"""Expert parallel trains an MoE model exactly like one process.

Two ranks read different halves of each batch and hold half of the experts each; tokens reach their experts by
all-to-all. Non-expert gradients are averaged over the ranks and expert gradients (sums over the ranks' losses)
divided by the same degree, either by hand or by FSDP2 (fully_shard_experts + parallel.fsdp.apply_fsdp); losses
at every step and the final (full) weights must match the single-process run to 1e-4. The Switch load-balancing
loss is switched off: it is a non-linear function of the whole batch, so no data-parallel layout reproduces it from
per-rank halves (the router z-loss, a per-token mean, stays on).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from model.config import MoEConfig

from harness import RunSpec, Strategy, assert_runs_match, run_layouts

# Adam's eps at the scale of the gradients, so an update depends on the gradient's size and a wrong gradient
# scale (a missing 1/dp, 1/cp or 1/microbatches) changes the weights; with eps=1e-8 Adam would hide it.
ADAM_EPS = 1e-4

MOE = {"num_experts": 4, "top_k": 2, "aux_loss_weight": 0.0, "router_z_loss_weight": 0.001}


class ExpertParallelFSDPStrategy(Strategy):
    """parallelize()'s order for ep: experts sharded over ep, FSDP2 on the experts (fully_shard_experts), then the
    real parallel.fsdp.apply_fsdp on the blocks and the root."""

    def setup(self, spec, net, dims, pcfg, mesh):
        from parallel.expert import apply_expert_parallel, fully_shard_experts
        from parallel.fsdp import apply_fsdp

        self.dims, self.pcfg, self.mesh, self.model_cfg = dims, pcfg, mesh, spec.model_config()
        apply_expert_parallel(net, dims.submesh(mesh, "ep"), pcfg)
        fully_shard_experts(net, dims, mesh)
        self.model = apply_fsdp(net, dims, pcfg, mesh=mesh)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
            foreach=False,
        )
        return self.model


class ExpertParallelStrategy(Strategy):
    """apply_expert_parallel alone, with data-parallel gradient averaging done by hand (no FSDP/DDP wrapper)."""

    def setup(self, spec, net, dims, pcfg, mesh):
        from parallel.expert import apply_expert_parallel

        self.dims, self.pcfg, self.mesh, self.model_cfg = dims, pcfg, mesh, spec.model_config()
        self.model = apply_expert_parallel(net, dims.submesh(mesh, "ep"), pcfg)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
            foreach=False,
        )
        return self.model

    def train_step(self, spec, tokens, labels):
        from parallel.expert import expert_parameters, scale_expert_gradients

        tokens, labels = self.local_batch(tokens, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(tokens, labels)
        loss.backward()
        dp = self.dims.dp_degree
        experts = {id(p) for p in expert_parameters(self.model)}
        for param in self.model.parameters():
            if id(param) not in experts and param.grad is not None:
                dist.all_reduce(param.grad, group=self.dims.submesh(self.mesh, "dp").get_group())
                param.grad.div_(dp)
        scale_expert_gradients(self.model, dp)
        self.optimizer.step()
        return self.average_over_dp(float(loss.detach()))


def _spec(shared_experts: int) -> RunSpec:
    return RunSpec(layout="ep", world_size=2, steps=10, global_batch=4, seq_len=16, eps=ADAM_EPS,
                   model_overrides={"moe": MoEConfig(**MOE, num_shared_experts=shared_experts), "hidden_dim": 64})


CASES = {  # name: (spec, strategy class)
    "ep-manual-dp": (_spec(0), ExpertParallelStrategy),
    "ep-fsdp-shared-expert": (_spec(1), ExpertParallelFSDPStrategy),
}


@pytest.fixture(scope="module")
def ep_results():
    """Both cases in one set of spawned processes (starting them costs more than the training)."""
    results = run_layouts([spec for spec, _ in CASES.values()], [cls() for _, cls in CASES.values()])
    return dict(zip(CASES, results))


@pytest.mark.distributed
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_expert_parallel_matches_single_process(ep_results, reference_run, case):
    got = ep_results[case]
    if isinstance(got, str):
        pytest.fail(f"{case} failed:\n{got}")
    assert_runs_match(got, reference_run(CASES[case][0]), rtol=1e-4)


def test_regroup_index_orders_tokens_by_expert_then_source():
    from parallel.expert import _regroup_index

    # 2 sources x 2 experts: source 0 sent [e0: 2 tokens, e1: 1], source 1 sent [e0: 1, e1: 2]
    counts = torch.tensor([[2, 1], [1, 2]])
    # received rows: s0e0 s0e0 s0e1 s1e0 s1e1 s1e1 -> expert-major: s0e0 s0e0 s1e0 | s0e1 s1e1 s1e1
    assert _regroup_index(counts).tolist() == [0, 1, 3, 2, 4, 5]
    assert _regroup_index(torch.tensor([[0, 0], [0, 3]])).tolist() == [0, 1, 2]
