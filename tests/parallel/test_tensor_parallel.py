"""Tensor + sequence parallel (alone and under FSDP) trains like one process, to 1e-4."""

import pytest
from harness import RunSpec, assert_runs_match, plan, planned_result

pytestmark = pytest.mark.distributed

# QK-norm (replicated weights whose grads need a tp reduction) and tied embeddings (one weight for the
# vocab-parallel embedding and the column-parallel head) are where a TP plan most easily goes wrong; z-loss and
# the logit softcap run on vocab-sharded logits under loss_parallel.
TRICKY_MODEL = {"qk_norm": True, "tie_embeddings": True, "z_loss_weight": 1e-3, "final_logit_softcap": 30.0}
LAYOUTS = {
    "tp-sp-loss_parallel": plan(RunSpec(layout="tp", world_size=2, model_overrides=TRICKY_MODEL, grad_clip=1.0)),
    "tp-plain": plan(
        RunSpec(
            layout="tp", world_size=2, overrides={"sequence_parallel": False, "loss_parallel": False}, grad_clip=1.0
        )
    ),
    "fsdp_tp": plan(RunSpec(layout="fsdp_tp", world_size=4, grad_clip=1.0)),  # 2 FSDP shards x 2 TP ranks
    # 2 replicas x 2 TP ranks: DDP cannot take DTensor params, so this replicates through FSDP2's HSDP mesh
    "replicate_tp": plan(RunSpec(layout="ddp", world_size=4, overrides={"tp": 2}, grad_clip=1.0)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(reference_run, name):
    spec = LAYOUTS[name]
    assert_runs_match(planned_result(spec), reference_run(spec), rtol=1e-4)


def test_fsdp_tp_ranks_read_data_by_dp_rank():
    """TP peers must read the same data slice; the dp ranks must cover 0..dp-1."""
    info = planned_result(LAYOUTS["fsdp_tp"]).rank_info
    assert [i["mesh_dims"] for i in info][0] == {"pp": 1, "dp_replicate": 1, "dp_shard": 2, "cp": 1, "tp": 2}
    by_dp: dict = {}
    for rank in info:
        by_dp.setdefault(rank["dp_rank"], []).append(rank["tp_rank"])
    assert by_dp == {0: [0, 1], 1: [0, 1]}, info
