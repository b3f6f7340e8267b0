"""Every layout the launcher refuses is refused by the one validation pass (launcher/validation.py ->
parallel/dims.py), before any process group or model exists: each rule composes the real config in-process, as
`python -m launcher.train` does under torchrun with WORLD_SIZE set, and `validate` must raise a ConfigError naming
the key, in under 2 s, with `torch.distributed.init_process_group` never called and no process spawned."""

from __future__ import annotations

import re
import time

import pytest
import torch.distributed as dist
from launcher_testing import REPO

MOE = ["model=mixtral_tiny", "model.moe.expert_hidden_dim=32"]
# (rule id, world size, overrides, text the error must contain)
RULES = [
    ("degrees_do_not_multiply_to_world", 3, ["parallel=tp"], "world size"),
    (
        "tp_does_not_divide_heads",
        4,
        ["parallel=tp", "parallel.tp=4", "model.n_heads=6", "model.dim=96", "model.n_kv_heads=6"],
        "parallel.tp=4",
    ),
    ("tp_with_alibi", 2, ["parallel=tp", "model.pos_embedding=alibi"], "pos_embedding=alibi"),
    ("tp_with_moe_router_losses", 2, ["parallel=tp", *MOE], "aux_loss_weight=0"),
    (
        "tp_with_ep",
        4,
        ["parallel=ep", "parallel.tp=2", *MOE, "model.moe.aux_loss_weight=0", "model.moe.router_z_loss_weight=0"],
        "tensor parallel together with expert parallel",
    ),
    ("more_stages_than_layers", 4, ["parallel=pp", "parallel.pp=4", "model.n_layers=2"], "model.n_layers=2"),
    (
        "interleaved_stages_than_layers",
        2,
        ["parallel=pp", "parallel.pp_schedule=Interleaved1F1B", "parallel.pp_stages_per_rank=2", "model.n_layers=3"],
        "pipeline stages",
    ),
    ("pp_with_cp", 4, ["parallel=pp", "parallel.cp=2"], "parallel.cp"),
    (
        "1f1b_with_two_stages_per_rank",
        2,
        ["parallel=pp", "parallel.pp_stages_per_rank=2"],
        "parallel.pp_stages_per_rank=2",
    ),
    (
        "zbv_with_three_stages_per_rank",
        2,
        ["parallel=pp", "parallel.pp_schedule=ZBVZeroBubble", "parallel.pp_stages_per_rank=3", "model.n_layers=6"],
        "pp_stages_per_rank=3",
    ),
    (
        "zero_bubble_with_fsdp",
        4,
        [
            "parallel=pp_fsdp",
            "parallel.pp_schedule=InterleavedZeroBubble",
            "parallel.pp_stages_per_rank=2",
            "model.n_layers=4",
        ],
        "InterleavedZeroBubble",
    ),
    (
        "zero_bubble_with_ddp",
        4,
        [
            "parallel=pp",
            "parallel.dp_replicate=-1",
            "parallel.pp_schedule=ZBVZeroBubble",
            "parallel.pp_stages_per_rank=2",
            "model.n_layers=4",
        ],
        "ZBVZeroBubble",
    ),
    (
        "zero_bubble_with_tp",
        4,
        [
            "parallel=pp",
            "parallel.tp=2",
            "parallel.pp_schedule=ZBVZeroBubble",
            "parallel.pp_stages_per_rank=2",
            "model.n_layers=4",
            "model.n_heads=2",
        ],
        "ZBVZeroBubble",
    ),
    ("tied_embeddings_under_pp", 2, ["parallel=pp", "model.tie_embeddings=true"], "tie_embeddings"),
    ("moe_router_losses_under_pp", 2, ["parallel=pp", *MOE], "aux_loss_weight=0"),
    ("fp16_under_pp", 2, ["parallel=pp", "trainer.precision=fp16"], "trainer.precision=fp16"),
    (
        "1f1b_fewer_microbatches_than_stages",
        2,
        ["parallel=pp", "parallel.pp_microbatches=1"],
        "parallel.pp_microbatches=1",
    ),
    (
        "interleaved_microbatches_not_in_rounds",
        2,
        [
            "parallel=pp",
            "parallel.pp_schedule=Interleaved1F1B",
            "parallel.pp_stages_per_rank=2",
            "model.n_layers=4",
            "parallel.pp_microbatches=5",
            "trainer.global_batch_size=10",
            "trainer.micro_batch_size=5",
        ],
        "parallel.pp_microbatches=5",
    ),
    (
        "pp_microbatches_do_not_divide_rank_batch",
        2,
        ["parallel=pp", "parallel.pp_microbatches=3"],
        "parallel.pp_microbatches=3",
    ),
    (
        "pp_layer_split_wrong",
        2,
        ["parallel=pp", "parallel.pp_layer_split='0-0,2-3'", "model.n_layers=4"],
        "pp_layer_split",
    ),
    ("deepspeed_with_pp", 4, ["parallel=zero2", "parallel.pp=2"], "engine=deepspeed"),
    ("deepspeed_without_stage", 2, ["parallel=zero1", "parallel.zero_stage=0"], "zero_stage"),
    ("zero_stage_without_deepspeed", 2, ["parallel=fsdp", "parallel.zero_stage=2"], "engine=deepspeed"),
    ("fsdp_option_without_fsdp", 2, ["parallel=ddp", "parallel.fsdp_param_dtype=bf16"], "does not use FSDP"),
    ("ep_without_moe", 2, ["parallel=ep"], "needs an MoE model"),
    ("ep_not_dividing_experts", 4, ["parallel=ep", "parallel.ep=4", *MOE, "model.moe.num_experts=6"], "num_experts=6"),
    ("ep_with_replicas", 4, ["parallel=ep", "parallel.dp_replicate=2", *MOE], "dp_replicate"),
    ("cp_does_not_divide_sequence", 2, ["parallel=cp", "data.seq_len=30"], "sequence length 30"),
    ("cp_with_alibi", 2, ["parallel=cp", "model.pos_embedding=alibi"], "pos_embedding=alibi"),
    (
        "ulysses_heads_not_divisible",
        4,
        ["parallel=cp", "parallel.cp=4", "parallel.cp_method=ulysses", "model.n_heads=2", "data.seq_len=32"],
        "Ulysses",
    ),
    (
        "batch_not_divisible_by_ranks",
        2,
        ["parallel=fsdp", "trainer.global_batch_size=6", "trainer.micro_batch_size=2"],
        "trainer.global_batch_size",
    ),
    ("mtp_with_tp", 2, ["parallel=tp", "model.mtp_depth=1"], "model.mtp_depth=1"),
    ("mtp_with_cp", 2, ["parallel=cp", "model.mtp_depth=1"], "parallel.cp=2"),
    ("mtp_with_pp", 2, ["parallel=pp", "model.mtp_depth=1"], "parallel.pp=2"),
    ("unknown_schedule", 2, ["parallel=pp", "parallel.pp_schedule=DualPipe"], "parallel.pp_schedule"),
    ("unknown_precision_spelling", 1, ["parallel=fsdp", "parallel.fsdp_param_dtype=half"], "parallel.fsdp_param_dtype"),
]


@pytest.fixture
def compose(shards, tmp_path, monkeypatch):
    """compose(overrides, world_size): the launcher's config as torchrun's rank 0 would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from launcher_testing import tiny_overrides

    import launcher.train  # noqa: F401 - registers the schema and resolvers, as the entry point does

    def called(*args, **kwargs):
        raise AssertionError("init_process_group was called during validation")

    monkeypatch.setattr(dist, "init_process_group", called)

    def make(overrides, world_size):
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
        base = tiny_overrides(shards, tmp_path / "run") + ["model.n_heads=4", "model.n_kv_heads=2", "model.dim=32"]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            return hydra_compose("train", overrides=base + overrides)

    return make


@pytest.mark.parametrize("world_size, overrides, expected", [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_layout_rule_refused_before_any_process_group(compose, world_size, overrides, expected):
    from launcher.validation import ConfigError, validate

    start = time.monotonic()
    cfg = compose(overrides, world_size)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(cfg, world_size)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, f"refusing took {elapsed:.2f} s"
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "world_size, overrides",
    [
        (
            4,
            [
                "parallel=pp_fsdp",
                "parallel.pp_schedule=Interleaved1F1B",
                "parallel.pp_stages_per_rank=2",
                "model.n_layers=4",
            ],
        ),
        (2, ["parallel=pp", "parallel.pp_schedule=ZBVZeroBubble", "parallel.pp_stages_per_rank=2", "model.n_layers=4"]),
        (8, ["parallel=3d", "model.n_layers=2"]),
        (2, ["parallel=ep", *MOE]),
        (1, ["parallel=fsdp", "parallel.fsdp_param_dtype=bfloat16"]),  # torch's long name is an alias
    ],
)
def test_layouts_that_fit_pass_the_same_validation(compose, world_size, overrides):
    from launcher.validation import validate

    plan = validate(compose(overrides, world_size), world_size)
    assert plan.dims.world_size == world_size
    assert plan.cfg.parallel.fsdp_param_dtype in ("fp32", "bf16")
