"""DeepSpeed ZeRO 1/2/3 train like one process (to 1e-5), with the DeepSpeed config generated from ours."""

import pytest
from harness import RunSpec, assert_runs_match, load_parallel_config, plan, planned_result

from parallel import ParallelDims
from parallel.zero import deepspeed_config

pytestmark = pytest.mark.distributed

LAYOUTS = {
    stage: plan(RunSpec(layout=stage, world_size=2, steps=10, grad_clip=1.0)) for stage in ("zero1", "zero2", "zero3")
}
# ZeRO-Offload: optimizer state and (stage 3) parameters on CPU, stepped by torch AdamW.
LAYOUTS["zero3-offload"] = plan(
    RunSpec(layout="zero3", world_size=2, steps=10, grad_clip=1.0, overrides={"zero_offload": True})
)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(reference_run, name):
    spec = LAYOUTS[name]
    assert_runs_match(planned_result(spec), reference_run(spec), rtol=1e-5)


def test_deepspeed_config_comes_from_our_configs():
    pcfg = load_parallel_config("zero3", zero_offload=True)
    dims = ParallelDims.from_config(pcfg, 4)
    ds = deepspeed_config(
        dims,
        micro_batch_size=3,
        grad_accum_steps=2,
        precision="bf16",
        lr=2e-4,
        betas=(0.9, 0.99),
        eps=1e-7,
        weight_decay=0.05,
        grad_clip=0.5,
    )
    assert ds["train_batch_size"] == 3 * 2 * 4
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["optimizer"]["params"] | {} == {
        "lr": 2e-4,
        "betas": [0.9, 0.99],
        "eps": 1e-7,
        "weight_decay": 0.05,
        "torch_adam": True,
        "adam_w_mode": True,
    }
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


def test_zero_needs_a_stage_and_pure_data_parallel():
    with pytest.raises(ValueError, match="zero_stage"):
        ParallelDims.from_config(load_parallel_config("zero1", zero_stage=0), 2)
    with pytest.raises(ValueError, match="engine=deepspeed"):
        ParallelDims.from_config(load_parallel_config("zero2", tp=2), 4)
    with pytest.raises(ValueError, match="engine=deepspeed"):
        ParallelDims.from_config(load_parallel_config("fsdp", zero_stage=2), 2)
