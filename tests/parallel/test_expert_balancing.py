"""Aux-loss-free balancing under data parallel: each rank routes its own tokens, and
parallel.expert.update_expert_biases must move every rank's selection biases by the load of the *global* batch,
leaving them identical across ranks and equal to one process's update on the whole batch; plus the layout rules
parallel.dims applies to the new blocks before any process group exists."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from harness import load_parallel_config, tiny_model_config

MODEL = dict(
    n_kv_heads=None,
    moe=dict(
        num_experts=4, top_k=1, score_func="sigmoid", expert_bias=True, bias_update_rate=0.01, expert_hidden_dim=32
    ),
)
BATCH = torch.randint(0, 128, (4, 17), generator=torch.Generator().manual_seed(3))


def _build():
    import model as model_lib

    torch.manual_seed(0)
    return model_lib.build(tiny_model_config(**MODEL))


def _rank_main(rank: int, store_path: str, out: str) -> None:
    from parallel import ParallelDims, parallelize
    from parallel.expert import update_expert_biases

    torch.set_num_threads(1)
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", rank=rank, world_size=2, store=store)
    try:
        pcfg = load_parallel_config("fsdp")
        dims = ParallelDims.from_config(pcfg, 2, tiny_model_config(**MODEL), 16)
        dims.build_mesh("cpu")
        model = parallelize(_build(), dims)
        rows = BATCH[2 * rank : 2 * rank + 2]
        model(rows[:, :-1], rows[:, 1:])  # training mode: this rank's tokens are counted
        imbalance = update_expert_biases([model], dims)
        biases = torch.stack([layer.moe.expert_bias for layer in model.layers.values()])
        gathered = [torch.empty_like(biases) for _ in range(2)]
        dist.all_gather(gathered, biases)
        if rank == 0:
            torch.save({"biases": gathered, "imbalance": imbalance}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_bias_update_uses_the_global_load_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "out.pt")
    mp.start_processes(_rank_main, args=(str(tmp_path / "store"), out), nprocs=2, start_method="spawn", join=True)
    got = torch.load(out)
    reference = _build()
    reference(BATCH[:, :-1], BATCH[:, 1:])
    expected_imbalance = reference.update_expert_biases()
    expected = torch.stack([layer.moe.expert_bias for layer in reference.layers.values()])
    assert expected.abs().sum() > 0  # the update moved something
    for rank_biases in got["biases"]:
        torch.testing.assert_close(rank_biases, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(got["imbalance"], expected_imbalance)


@pytest.mark.parametrize(
    "layout, world_size, model, overrides, message",
    [
        ("tp", 2, dict(moe=dict(num_experts=4, top_k=2)), {}, "without the MoE router losses"),
        (
            "tp",
            4,
            dict(moe=dict(num_experts=4, top_k=2, aux_loss_weight=0.0, router_z_loss_weight=0.0)),
            {"ep": 2, "dp_shard": 2},
            "together with expert parallel",
        ),
        (
            "tp",
            2,
            dict(moe=dict(num_experts=4, top_k=2, aux_loss_weight=0.0, router_z_loss_weight=0.0, expert_hidden_dim=33)),
            {},
            "expert width=33",
        ),
        ("tp", 2, dict(qk_norm=True, qk_norm_scope="full"), {}, "full-width QK-norm"),
        (
            "cp",
            2,
            dict(
                rope_scaling=dict(
                    type="longrope", factor=4.0, original_max_seq_len=16, long_factor=[2.0] * 8, short_factor=[1.0] * 8
                )
            ),
            {},
            "longrope",
        ),
    ],
)
def test_layouts_the_new_blocks_cannot_take_are_refused_before_any_process_group(
    layout, world_size, model, overrides, message
):
    from parallel import ParallelDims

    with pytest.raises(ValueError, match=message):
        ParallelDims.from_config(load_parallel_config(layout, **overrides), world_size, tiny_model_config(**model), 16)


def test_tensor_parallel_takes_moe_without_router_losses():
    from parallel import ParallelDims

    moe = dict(moe=dict(num_experts=4, top_k=2, aux_loss_weight=0.0, router_z_loss_weight=0.0, expert_bias=True))
    assert ParallelDims.from_config(load_parallel_config("tp"), 2, tiny_model_config(**moe), 16).tp == 2
