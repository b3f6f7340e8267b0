"""ParallelDims: degrees resolved and checked against the world size and the model before any work, with
messages that name the key to change."""

import pytest
import torch.distributed as dist
from harness import RunSpec, load_parallel_config, tiny_model_config, train

from model.config import MoEConfig
from parallel import ParallelDims


def dims(layout: str, world_size: int, model=None, seq_len=None, **overrides) -> ParallelDims:
    return ParallelDims.from_config(load_parallel_config(layout, **overrides), world_size, model, seq_len)


def test_minus_one_takes_the_rest_of_the_world():
    d = dims("fsdp_tp", 8)
    assert (d.dp_replicate, d.dp_shard, d.tp, d.dp_degree) == (1, 4, 2, 4)
    d = dims("ddp", 4)
    assert (d.dp_replicate, d.dp_shard, d.dp_degree, d.ddp_enabled, d.fsdp_enabled) == (4, 1, 4, True, False)
    d = dims("hsdp", 8)
    assert (d.dp_replicate, d.dp_shard, d.hsdp_enabled) == (2, 4, True)
    d = dims("zero2", 3)
    assert d.dp_degree == 3


def test_single_process_has_no_mesh_and_reads_slice_zero():
    d = dims("single", 1)
    assert d.build_mesh("cpu") is None and d.dp_rank() == 0 and d.dp_degree == 1


def test_world_size_3_for_tp_2_fails_before_any_work():
    with pytest.raises(ValueError, match=r"world size 3.*parallel\.dp_replicate\*cp\*tp\*pp"):
        dims("fsdp_tp", 3)
    with pytest.raises(ValueError, match=r"multiply to 2 .*world size is 3"):
        dims("tp", 3)
    # the harness (like the trainer) validates before building any process group or weight
    with pytest.raises(ValueError, match="world size is 3"):
        train(RunSpec(layout="tp"), world_size=3)
    assert not dist.is_initialized()


def test_heads_not_divisible_by_tp():
    model = tiny_model_config(dim=96, n_heads=6, n_kv_heads=6, hidden_dim=128)
    with pytest.raises(ValueError, match=r"n_heads=6 is not divisible by parallel\.tp=4"):
        dims("tp", 4, model, tp=4)
    with pytest.raises(ValueError, match=r"n_kv_heads=2 is not divisible by parallel\.tp=4"):
        dims("tp", 4, tiny_model_config(n_kv_heads=2), tp=4)


def test_pipeline_larger_than_layers():
    with pytest.raises(ValueError, match=r"parallel\.pp=4 .* model\.n_layers=2"):
        dims("single", 4, tiny_model_config(n_layers=2), pp=4)
    with pytest.raises(ValueError, match=r"pp_stages_per_rank=2 = 4 pipeline stages"):
        dims("single", 2, tiny_model_config(n_layers=3), pp=2, pp_stages_per_rank=2, pp_schedule="Interleaved1F1B")


def test_schedule_and_stages_per_rank_must_agree():
    with pytest.raises(ValueError, match=r"pp_schedule=1F1B runs one stage per rank .*pp_stages_per_rank=2"):
        dims("pp", 2, pp_stages_per_rank=2)
    with pytest.raises(ValueError, match=r"ZBVZeroBubble .*pp_stages_per_rank=3"):
        dims("pp", 2, tiny_model_config(n_layers=6), pp_schedule="ZBVZeroBubble", pp_stages_per_rank=3)
    assert dims("pp", 2, tiny_model_config(n_layers=4), pp_schedule="Interleaved1F1B", pp_stages_per_rank=2).pp == 2


def test_expert_and_context_parallel_checks():
    with pytest.raises(ValueError, match="needs an MoE model"):
        dims("fsdp", 2, tiny_model_config(), ep=2)
    moe = tiny_model_config(moe=MoEConfig(num_experts=3, top_k=1))
    with pytest.raises(ValueError, match=r"num_experts=3 is not divisible by parallel\.ep=2"):
        dims("fsdp", 2, moe, ep=2)
    with pytest.raises(ValueError, match=r"ep=4 must be a multiple of parallel\.cp=1 and divide dp_shard\*cp=2"):
        dims("fsdp", 2, ep=4)
    with pytest.raises(ValueError, match=r"sequence length 6 is not divisible by 4"):
        dims("single", 2, tiny_model_config(), seq_len=6, cp=2)
    assert dims("single", 2, tiny_model_config(), seq_len=8, cp=2).cp == 2


def test_unknown_options_name_the_key():
    with pytest.raises(ValueError, match=r"parallel\.engine='megatron'"):
        dims("single", 1, engine="megatron")
    with pytest.raises(ValueError, match=r"parallel\.compile_backend='tvm'"):
        dims("single", 1, compile_backend="tvm")
    with pytest.raises(ValueError, match=r"parallel\.tp=0 must be >= 1"):
        dims("single", 1, tp=0)
    with pytest.raises(ValueError, match="cannot both be -1"):
        dims("ddp", 2, dp_shard=-1)
    with pytest.raises(ValueError, match="pos_embedding=learned"):
        dims("tp", 2, tiny_model_config(pos_embedding="learned"))
    with pytest.raises(FileNotFoundError, match="no parallel layout"):
        load_parallel_config("nonexistent")
