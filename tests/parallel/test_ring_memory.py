"""Ring attention keeps one K/V block for backward, not the whole sequence, and its gradients stay exact.

The tensors autograd holds between forward and backward are what context parallelism exists to bound. They are
measured with `torch.autograd.graph.saved_tensors_hooks` (every tensor a Function saves passes through its pack
hook): ring attention must hold exactly its local q, k, v, the fp32 output and log-sum-exp, whatever the ring
size, while the same attention over an all-gathered K/V (the layout the old backward matched) holds cp times the
local K/V. Gradients are checked against full attention on one process at cp = 2 and 4.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from harness import save_from_rank_0, spawn_gloo_workers

pytestmark = pytest.mark.distributed

BATCH, HEADS, KV_HEADS, LOCAL_LEN, HEAD_DIM = 2, 4, 2, 8, 8


def _saved_bytes(fn, *inputs) -> int:
    """Bytes of the distinct storages autograd saves while `fn(*inputs)` runs (its backward graph's memory)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return out, sum(storages.values())


def _full_attention(q, k, v, window):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    pos = torch.arange(q.shape[2])
    diff = pos[:, None] - pos[None, :]
    allowed = (diff >= 0) & (diff < window if window is not None else True)
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


def _worker(rank, world, port, out):
    import torch.distributed.nn.functional as dist_fn
    from torch.distributed.device_mesh import init_device_mesh

    from parallel.ring_attention import chunk_positions, ring_attention

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        meshes = {
            4: init_device_mesh("cpu", (4,), mesh_dim_names=("cp",))["cp"],
            2: init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "cp"))["cp"],
        }
        report = {}
        for cp, mesh in meshes.items():
            group, cp_rank = mesh.get_group(), mesh.get_local_rank()
            seq = LOCAL_LEN * cp
            gen = torch.Generator().manual_seed(cp)
            q = torch.randn(BATCH, HEADS, seq, HEAD_DIM, generator=gen, requires_grad=True)
            k = torch.randn(BATCH, KV_HEADS, seq, HEAD_DIM, generator=gen, requires_grad=True)
            v = torch.randn(BATCH, KV_HEADS, seq, HEAD_DIM, generator=gen, requires_grad=True)
            grad_out = torch.randn(BATCH, HEADS, seq, HEAD_DIM, generator=gen)
            window = LOCAL_LEN + 3  # blocks partly and wholly outside the window, and skipped future blocks
            reference = _full_attention(q, k, v, window)
            reference.backward(grad_out)

            idx = chunk_positions(cp_rank, cp, LOCAL_LEN, load_balance=True)
            local = [t.detach()[:, :, idx].requires_grad_() for t in (q, k, v)]
            got, ring_saved = _saved_bytes(
                lambda *t: ring_attention(*t, group, load_balance=True, sliding_window=window), *local
            )
            got.backward(grad_out[:, :, idx])
            errors = [(got - reference.detach()[:, :, idx]).abs().max().item()]
            errors += [(t.grad - full.grad[:, :, idx]).abs().max().item() for t, full in zip(local, (q, k, v))]

            def all_gathered(ql, kl, vl):  # the memory the old backward had: every K/V block kept for backward
                kf = torch.cat(dist_fn.all_gather(kl.contiguous(), group=group), dim=2)
                vf = torch.cat(dist_fn.all_gather(vl.contiguous(), group=group), dim=2)
                return torch.softmax(ql @ kf.repeat_interleave(2, 1).transpose(-1, -2), -1) @ vf.repeat_interleave(2, 1)

            _, gathered_saved = _saved_bytes(all_gathered, *[t.detach().requires_grad_() for t in local])
            report[cp] = {"errors": errors, "ring_saved": ring_saved, "gathered_saved": gathered_saved}
        gathered = [None] * world
        dist.all_gather_object(gathered, report)
        save_from_rank_0(gathered, out, rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ring_attention_backward_keeps_one_block_and_exact_gradients(tmp_path):
    reports = spawn_gloo_workers(_worker, 4, str(tmp_path / "report.pt"))
    fp32 = 4
    qkv = (BATCH * HEADS + 2 * BATCH * KV_HEADS) * LOCAL_LEN * HEAD_DIM * fp32
    out_and_lse = BATCH * HEADS * LOCAL_LEN * (HEAD_DIM + 1) * fp32
    local_kv = 2 * BATCH * KV_HEADS * LOCAL_LEN * HEAD_DIM * fp32
    for rank, report in enumerate(reports):
        for cp, r in report.items():
            assert max(r["errors"]) < 1e-5, f"rank {rank} cp {cp}: output/dq/dk/dv max errors {r['errors']}"
            # Exactly the local q, k, v plus fp32 output and log-sum-exp: nothing that grows with the ring.
            assert r["ring_saved"] == qkv + out_and_lse, (rank, cp, r)
            # The measure sees K/V blocks when they are kept: gathering them keeps all cp of them.
            assert r["gathered_saved"] >= cp * local_kv, (rank, cp, r)
            assert r["ring_saved"] < r["gathered_saved"] - (cp - 1) * local_kv, (rank, cp, r)
