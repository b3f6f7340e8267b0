"""Context parallel (ring and Ulysses attention) trains exactly like one process on the whole sequence.

Each cp rank gets its zig-zag (or contiguous) slice of every sequence with the global positions, FSDP over
dp_shard x cp averages the gradients, and losses at every step and the final weights must match the single-process
run to 1e-4. The kernel tests check forward and backward of the attention alone against full causal attention,
including GQA, sliding windows and logit soft-capping, where a wrong mask or merge would show at once.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from harness import RunSpec, assert_runs_match, run_layouts, save_from_rank_0, spawn_gloo_workers

# Adam's eps at the scale of the gradients, so an update depends on the gradient's size and a wrong gradient
# scale (a missing 1/dp, 1/cp or 1/microbatches) changes the weights; with eps=1e-8 Adam would hide it.
ADAM_EPS = 1e-4

pytestmark = pytest.mark.distributed


CASES = {
    "ring": dict(
        overrides={"cp_method": "ring"},
        model_overrides={"n_kv_heads": 2, "sliding_window": 6, "attn_logit_softcap": 20.0},
    ),
    "ulysses": dict(
        overrides={"cp_method": "ulysses"},
        model_overrides={"n_kv_heads": 2, "sliding_window": 6, "attn_logit_softcap": 20.0},
    ),
}


SPECS = {
    name: RunSpec(layout="cp", world_size=2, steps=10, global_batch=2, seq_len=16, eps=ADAM_EPS, **case)
    for name, case in CASES.items()
}


@pytest.fixture(scope="module")
def cp_results():
    """Every case in one set of spawned processes (starting them costs more than the training)."""
    return dict(zip(SPECS, run_layouts(list(SPECS.values()))))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(CASES))
def test_context_parallel_matches_single_process(cp_results, reference_run, case):
    got = cp_results[case]
    if isinstance(got, str):
        pytest.fail(f"cp {case} failed:\n{got}")
    assert_runs_match(got, reference_run(SPECS[case]), rtol=1e-4)


# ------------------------------------------------------------------------------------------ attention kernels
def _reference_attention(q, k, v, window, softcap):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    pos = torch.arange(q.shape[2])
    diff = pos[:, None] - pos[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed &= diff < window
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


KERNEL_CASES = [
    # method, cp, load_balance, sliding_window, softcap, kv_heads
    ("ring", 4, True, None, None, 2),
    ("ring", 4, False, 3, 30.0, 1),  # contiguous + window: trailing blocks are skipped, backward must still ring
    ("ring", 2, True, 5, None, 4),
    ("ulysses", 4, True, 6, 30.0, 1),  # one KV head, repeated to the query heads before the all-to-all
    ("ulysses", 2, False, None, None, 2),
]


def _kernel_worker(rank, world, port, out):
    from torch.distributed.device_mesh import init_device_mesh

    from model.blocks.attention import ScaledDotProductAttention
    from parallel.context import ContextParallelAttention
    from parallel.ring_attention import chunk_positions

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        meshes = {
            4: init_device_mesh("cpu", (4,), mesh_dim_names=("cp",)),
            2: init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "cp"))["cp"],
        }
        all_errors = []
        for method, cp, load_balance, window, softcap, kv_heads in KERNEL_CASES:
            mesh = meshes[cp]
            gen = torch.Generator().manual_seed(0)
            batch, heads, seq, head_dim = 2, 4, 16, 8
            q = torch.randn(batch, heads, seq, head_dim, generator=gen, requires_grad=True)
            k = torch.randn(batch, kv_heads, seq, head_dim, generator=gen, requires_grad=True)
            v = torch.randn(batch, kv_heads, seq, head_dim, generator=gen, requires_grad=True)
            grad_out = torch.randn(batch, heads, seq, head_dim, generator=gen)
            ref_out = _reference_attention(q, k, v, window, softcap)
            ref_out.backward(grad_out)

            idx = chunk_positions(mesh.get_local_rank(), cp, seq // cp, load_balance)
            local = [t.detach()[:, :, idx].requires_grad_() for t in (q, k, v)]
            attention = ContextParallelAttention(ScaledDotProductAttention(), mesh, method, load_balance)
            got = attention(*local, sliding_window=window, softcap=softcap)
            got.backward(grad_out[:, :, idx])
            errors = [(got - ref_out.detach()[:, :, idx]).abs().max()]
            errors += [(t.grad - full.grad[:, :, idx]).abs().max() for t, full in zip(local, (q, k, v))]
            all_errors.append(torch.stack(errors))
        # every rank checks its own share: gather the worst error per case
        errors = torch.stack(all_errors)
        dist.all_reduce(errors, op=dist.ReduceOp.MAX)
        save_from_rank_0(errors, out, rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_attention_kernels_forward_and_backward(tmp_path):
    """Ring and Ulysses attention vs full causal attention: output and dq/dk/dv on every rank, several layouts."""
    errors = spawn_gloo_workers(_kernel_worker, 4, str(tmp_path / "errors.pt"))
    for case, case_errors in zip(KERNEL_CASES, errors):
        assert case_errors.max() < 1e-5, f"{case}: output/dq/dk/dv max errors {case_errors.tolist()}"


def test_shard_for_context_parallel_zigzag_positions():
    from parallel.config import ParallelConfig
    from parallel.context import shard_for_context_parallel

    class FakeMesh:  # shard_for_context_parallel only asks a 1-D mesh for its size and this rank's index
        ndim = 1

        def __init__(self, rank):
            self.rank = rank

        def size(self):
            return 4

        def get_local_rank(self):
            return self.rank

    tokens = torch.arange(16).repeat(2, 1)
    seen = []
    for rank in range(4):
        t, y, pos = shard_for_context_parallel(tokens, tokens + 100, None, FakeMesh(rank), ParallelConfig(cp=4))
        assert torch.equal(t[0], pos) and torch.equal(y[0], pos + 100)
        seen.append(pos)
    assert [p.tolist() for p in seen] == [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="not divisible by 8"):
        shard_for_context_parallel(torch.zeros(1, 12, dtype=torch.long), None, None, FakeMesh(0), ParallelConfig(cp=4))


def test_restore_sequence_order_inverts_the_cut():
    """Per-token values of each cp rank's chunks (zig-zag or contiguous) put back in sequence order: what the
    downstream evaluation's scoring forward gathers under context parallel."""
    from parallel.context import restore_sequence_order
    from parallel.ring_attention import chunk_positions

    values = torch.arange(2 * 16 * 3).reshape(2, 16, 3)
    for cp, load_balance in [(4, True), (4, False), (2, True)]:
        pieces = [values[:, chunk_positions(rank, cp, 16 // cp, load_balance)] for rank in range(cp)]
        assert torch.equal(restore_sequence_order(pieces, load_balance), values)
