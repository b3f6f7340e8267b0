"""parallel.estimate against hand calculations: memory per GPU of training layouts (the arithmetic is written out
next to each expected number), the pipeline split training uses, and the time to train."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from model.config import ModelConfig, MoEConfig
from parallel.config import ParallelConfig
from parallel.dims import ParallelDims
from parallel.estimate import (
    TrainingRun,
    estimate,
    estimate_memory,
    layout_world_size,
    sharding,
    stage_layers,
    stage_memory,
)
from parallel.stage_plan import stage_layer_ranges

REPO = Path(__file__).resolve().parents[2]

# vocab 100, dim 64, 2 layers, 4 heads (MHA), SwiGLU hidden 128, untied:
#   embedding 100*64 = 6400; per layer: attention 4*64*64 = 16384, norms 2*64 = 128, FFN 3*64*128 = 24576
#   -> 41088; final norm 64; output 6400. Total 6400 + 2*41088 + 64 + 6400 = 95040.
SMALL = ModelConfig(name="small", vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_seq_len=32)
# Per layer and token (no checkpointing): attention 2*64 + 2*64 + 2*64 = 384, SwiGLU 2*64 + 3*128 = 512 -> 896.
SMALL_LAYER_ACTIVATIONS = 896


def load_model_yaml(name: str) -> ModelConfig:
    path = REPO / "configs" / "model" / f"{name}.yaml"
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def training_run(
    model: ModelConfig,
    world_size: int = 1,
    *,
    seq_len: int = 32,
    micro_batch_size: int = 2,
    global_batch: int | None = None,
    precision: str = "bf16",
    **parallel,
) -> TrainingRun:
    """A run as the launcher hands it over: the layout through ParallelDims.from_config, training's one rule set."""
    dims = ParallelDims.from_config(ParallelConfig(**parallel), world_size, model, seq_len, precision)
    global_batch = global_batch or micro_batch_size * dims.dp_degree
    return TrainingRun(model, dims, seq_len, micro_batch_size, global_batch, precision)


def test_memory_zero1_by_hand() -> None:
    run = training_run(SMALL, 4, engine="deepspeed", zero_stage=1, dp_shard=-1)
    mem = estimate_memory(run)
    assert mem.weights == 95040 * 2  # bf16 under DeepSpeed's bf16 mode, replicated
    assert mem.gradients == 95040 * 2  # bf16, replicated
    assert mem.optimizer == 95040 * (4 + 2 * 4) / 4  # fp32 master + 2 fp32 moments, sharded over dp=4
    # 896 per layer and token, 2 layers, 2*32 tokens, 2 bytes = 229,376; plus fp32 logits of one 64-token chunk
    # and their gradient 2*64*100*4 = 51,200
    assert mem.activations == 2 * SMALL_LAYER_ACTIVATIONS * 64 * 2 + 51_200 == 229_376 + 51_200


def test_memory_zero3_by_hand() -> None:
    mem = estimate_memory(training_run(SMALL, 4, engine="deepspeed", zero_stage=3, dp_shard=-1))
    assert mem.weights == 95040 * 2 / 4 + 2 * 41088 * 2  # sharded + the gathered and the prefetched layer
    assert mem.gradients == 95040 * 2 / 4
    assert mem.optimizer == 95040 * 12 / 4


def test_memory_fsdp_by_hand() -> None:
    """FSDP2 keeps fp32 weights, gradients and moments sharded over dp_shard, and gathers layers in bf16."""
    mem = estimate_memory(training_run(SMALL, 4, dp_shard=-1, fsdp_param_dtype="bf16", precision="fp32"))
    assert mem.weights == 95040 * 4 / 4 + 2 * 41088 * 2  # sharded fp32 + the gathered and prefetched bf16 layer
    assert mem.gradients == 95040 * 4 / 4
    assert mem.optimizer == 95040 * 8 / 4
    assert mem.activations == 229_376 + 51_200  # computed in fsdp_param_dtype=bf16


def test_memory_tp_pp_full_checkpointing_by_hand() -> None:
    # pp_microbatches=4 over a rank batch of 8: pipeline microbatches of 2 sequences, as micro_batch_size was before
    run = training_run(SMALL, 4, tp=2, pp=2, ac_mode="full", global_batch=8)
    assert stage_layers(run) == [range(1), range(1, 2)]
    # stage 0: layer 0 split by tp, norms replicated, embedding split: (16384 + 24576)/2 + 128 + 6400/2 = 23808
    # stage 1: layer 1 + final norm + output/2: 20480 + 128 + 64 + 3200 = 23872; fp32 weights, grads, moments
    first, last = stage_memory(run, 0), stage_memory(run, 1)
    assert (first.weights, first.gradients, first.optimizer) == (23808 * 4, 23808 * 4, 23808 * 8)
    assert (last.weights, last.gradients, last.optimizer) == (23872 * 4, 23872 * 4, 23872 * 8)
    # 2*32/tp = 32 tokens per GPU in bf16 (autocast). 1F1B: stage 0 holds 2 micro-batches of its layer input (64)
    # + one recomputed layer (896); stage 1 holds 1, plus the logits chunk 2 * 64 * (100/2) * 4.
    assert first.activations == (2 * 64 + 896) * 32 * 2
    assert last.activations == (64 + 896) * 32 * 2 + 2 * 64 * 50 * 4
    assert estimate_memory(run) == last  # the larger stage
    gpipe = training_run(SMALL, 4, tp=2, pp=2, ac_mode="full", global_batch=8, pp_schedule="GPipe")
    assert stage_memory(gpipe, 0).activations == (4 * 64 + 896) * 32 * 2  # all 4 microbatches in flight


def test_full_checkpointing_every_second_layer() -> None:
    """ac_every=2 wraps layers 0, 2, ... of the stage (parallel/checkpointing.py): the others keep everything."""
    cfg = dataclasses.replace(SMALL, n_layers=4)
    mem = estimate_memory(training_run(cfg, ac_mode="full", ac_every=2, precision="fp32"))
    # layers 0 and 2 keep their input (64), layers 1 and 3 all 896, one layer recomputed (896); 64 tokens, fp32
    assert mem.activations == (2 * 64 + 2 * 896 + 896) * 64 * 4 + 2 * 64 * 100 * 4


def test_memory_expert_parallel_fsdp_by_hand() -> None:
    moe = dataclasses.replace(SMALL, moe=MoEConfig(num_experts=4, top_k=2, expert_hidden_dim=32))
    # per layer: attention 16384, norms 128, router 64*4 = 256, experts 4 * 3*64*32 = 24576
    mem = estimate_memory(training_run(moe, 4, dp_shard=-1, ep=2, fsdp_param_dtype="bf16"))
    dense = 2 * (16384 + 128 + 256) + 6400 + 64 + 6400  # everything but the routed experts: 46400
    experts = 2 * 24576 / 2  # ep=2: each GPU holds half of each layer's experts
    sharded = dense / 4 + experts / (4 // 2)  # dense over dp_shard=4, experts over dp_shard/ep=2
    gathered_layer = 16384 + 128 + 256 + 24576 / 2
    assert mem.weights == sharded * 4 + 2 * gathered_layer * 2
    assert mem.gradients == sharded * 4
    assert mem.optimizer == sharded * 8


# Dense first layers, MoE later ones: per-token cost 271,104 (dense) vs 716,544 (MoE, top 4 of 8 experts), so
# training's balanced cut is layers 0-2 | 3, not the equal 0-1 | 2-3.
UNEVEN = ModelConfig(
    name="uneven",
    vocab_size=100,
    dim=64,
    n_layers=4,
    n_heads=4,
    hidden_dim=128,
    max_seq_len=32,
    moe=MoEConfig(
        num_experts=8, top_k=4, expert_hidden_dim=128, first_dense=2, aux_loss_weight=0.0, router_z_loss_weight=0.0
    ),
)


def test_pipeline_memory_uses_trainings_stage_split_on_an_uneven_moe_model() -> None:
    run = training_run(UNEVEN, 2, pp=2, global_batch=4, precision="fp32")
    training_split = stage_layer_ranges(UNEVEN, run.dims.cfg, 2)  # what parallel/pipeline.py builds
    assert stage_layers(run) == training_split == [range(3), range(3, 4)]
    assert training_split != [range(2), range(2, 4)]  # the equal split
    # dense layer 41,088; MoE layer: attention 16384 + norms 128 + router 64*8 = 512 + experts 8*3*64*128 = 196,608
    # -> 213,632. Stage 0: 2 dense + 1 MoE + embedding 6400 = 302,208; stage 1: 1 MoE + final norm 64 + output 6400
    # = 220,096 (fp32 weights).
    assert stage_memory(run, 0).weights == 302_208 * 4
    assert stage_memory(run, 1).weights == 220_096 * 4
    # The equal split pinned by hand would size other stages: 2*41,088 + 6400 = 88,576 and 2*213,632 + 6464.
    pinned = training_run(UNEVEN, 2, pp=2, global_batch=4, precision="fp32", pp_layer_split="0-1,2-3")
    assert [stage_memory(pinned, s).weights for s in (0, 1)] == [88_576 * 4, 433_728 * 4]


def test_multi_stage_schedules_are_refused_by_name() -> None:
    four_layers = dataclasses.replace(SMALL, n_layers=4)
    run = training_run(four_layers, 2, pp=2, pp_schedule="Interleaved1F1B", pp_stages_per_rank=2, global_batch=4)
    with pytest.raises(ValueError, match="pp_schedule=Interleaved1F1B: the estimate models one stage per rank"):
        estimate_memory(run)


def test_world_size_from_the_degrees_or_num_gpus() -> None:
    assert layout_world_size(ParallelConfig(tp=2, pp=2, dp_shard=4), None) == 16
    assert layout_world_size(ParallelConfig(dp_shard=-1), 8) == 8
    with pytest.raises(ValueError, match="parallel.dp_shard=-1 takes the rest of the world size: give num_gpus"):
        layout_world_size(ParallelConfig(dp_shard=-1), None)


def test_time_to_train_by_hand() -> None:
    run = training_run(load_model_yaml("llama3_8b"), 64, seq_len=8192, micro_batch_size=1, dp_shard=-1)
    report = estimate(run, gpu="H100 SXM", tokens=1e12, mfu=0.5)
    seconds = 1e12 * (45_029_548_032 + 12_884_901_888) / (64 * 989e12 * 0.5)
    assert report["time_to_train_hours"] == pytest.approx(seconds / 3600, rel=1e-12)
    assert report["gpu_hours"] == pytest.approx(64 * seconds / 3600, rel=1e-12)
    assert report["layout"]["global_batch_tokens"] == 64 * 8192 and report["layout"]["sharding"] == "fsdp"
    assert estimate(training_run(SMALL), gpu="cpu", tokens=None, mfu=0.4)["time_to_train_hours"] is None
    given = estimate(run, gpu="my accelerator", tokens=1e12, mfu=0.5, peak_flops_per_gpu=989e12)
    assert given["time_to_train_hours"] == report["time_to_train_hours"]  # a peak given for an unlisted device


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"mfu": 0.0}, "mfu=0.0 must be in"),
        ({"tokens": -1.0}, "tokens=-1.0 must be positive"),
        ({"peak_flops_per_gpu": 0.0}, "peak_flops=0.0 must be positive"),
    ],
)
def test_bad_estimate_keys_are_refused(keys: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(training_run(SMALL), **{"gpu": "H100", "tokens": None, "mfu": 0.4, **keys})


def test_fsdp_shards_over_dp_shard_times_cp_and_hsdp_replicates() -> None:
    """FSDP2's shard mesh is dp_shard x cp (parallel/fsdp.py); HSDP replicates it over dp_replicate."""
    cp = estimate_memory(training_run(SMALL, 4, dp_shard=2, cp=2, global_batch=2))
    hsdp = estimate_memory(training_run(SMALL, 4, dp_replicate=2, dp_shard=2))
    assert cp.optimizer == 95040 * 8 / 4
    assert hsdp.optimizer == 95040 * 8 / 2
    assert sharding(training_run(SMALL, 4, dp_replicate=2, dp_shard=2)) == "hsdp"
    assert sharding(training_run(SMALL, 4, dp_replicate=4)) == "none"  # DDP
