"""Bad configs stop `python -m launcher.train` before any work: non-zero exit, a message naming the key, fast."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from launcher_testing import REPO, run_train, tiny_overrides

# (case id, overrides on top of a valid tiny config, text the error must contain): each run as a real process.
BAD_CONFIGS = [
    ("unknown_key", ["trainer.max_stepz=5"], "max_stepz"),
    ("wrong_type", ["trainer.max_steps=lots"], "max_steps"),
    ("unknown_group_option", ["schedule=linear_forever"], "schedule"),
    ("world_size_mismatch", ["parallel.dp_replicate=2"], "world size"),
    ("warmup_longer_than_run", ["schedule.warmup_steps=40", "trainer.max_steps=16"], "schedule.warmup_steps"),
    ("missing_data_path", ["data.path=null"], "data.path"),
    ("nonexistent_data_path", ["data.path=/nonexistent/shards"], "data.path=/nonexistent/shards"),
    ("batch_not_divisible", ["trainer.global_batch_size=7"], "trainer.global_batch_size"),
    ("seq_len_over_model_max", ["data.seq_len=128"], "model.max_seq_len"),
    ("heads_do_not_divide_dim", ["model.dim=33"], "model.dim"),
]
# More cases checked in-process (compose + validate, as launcher.train does), which costs no interpreter start.
MORE_BAD_CONFIGS = [
    (
        "wsd_decay_overlaps_warmup",
        ["schedule=wsd", "schedule.warmup_steps=10", "schedule.decay_fraction=0.5"],
        "schedule.decay_fraction",
    ),
    (
        "batch_tokens_not_multiple",
        ["trainer.global_batch_size=null", "trainer.global_batch_tokens=100"],
        "trainer.global_batch_tokens",
    ),
    ("two_batch_sizes", ["trainer.global_batch_tokens=256"], "exactly one"),
    ("bad_precision", ["trainer.precision=fp8"], "trainer.precision"),
    ("bad_wandb_mode", ["logging.wandb.mode=sometimes"], "logging.wandb.mode"),
    ("missing_init_from", ["trainer.init_from=/nonexistent/run"], "trainer.init_from"),
    ("tp_on_one_process", ["parallel.tp=2"], "world size"),
    ("empty_micro_batch", ["trainer.micro_batch_size=0"], "trainer.micro_batch_size"),
    ("pp_stages_per_rank", ["parallel=pp", "parallel.pp_stages_per_rank=2"], "parallel.pp_stages_per_rank"),
    # the watchdog must speak before the collective timeout (tiny_overrides: dist_timeout_s=60)
    ("hang_timeout_past_dist_timeout", ["trainer.hang_timeout_s=60"], "trainer.hang_timeout_s=60 must be below"),
    ("peer_timeout_past_dist_timeout", ["trainer.peer_timeout_s=90"], "trainer.peer_timeout_s=90 must be below"),
    ("peer_timeout_too_short", ["trainer.peer_timeout_s=2"], "trainer.peer_timeout_s=2"),
    ("hang_without_heartbeats", ["trainer.peer_timeout_s=0", "trainer.hang_timeout_s=30"], "trainer.hang_timeout_s"),
    ("negative_peer_timeout", ["trainer.peer_timeout_s=-1"], "trainer.peer_timeout_s=-1"),
    ("bad_spike_action", ["trainer.spike.action=panic"], "trainer.spike.action"),
    ("spike_window_too_short", ["trainer.spike.action=log", "trainer.spike.window=1"], "trainer.spike.window"),
    ("spike_z_not_positive", ["trainer.spike.z=0"], "trainer.spike.z"),
    ("spike_under_deepspeed", ["parallel=zero2", "trainer.spike.action=skip"], "trainer.spike.action=skip"),
    ("layer_health_under_deepspeed", ["parallel=zero2", "trainer.layer_health=true"], "trainer.layer_health"),
    ("skip_samples_not_a_range", ["data.skip_samples=[[8,4]]"], "data.skip_samples"),
    ("lora_unknown_target", ["model.lora.rank=4", "model.lora.targets=[q,qq]"], "model.lora.targets"),
    ("lora_gate_of_gelu_mlp", ["model.lora.rank=4", "model.mlp_type=gelu", "model.lora.targets=[gate]"], "['gate']"),
    ("lora_on_deepspeed", ["model.lora.rank=4", "parallel=zero2"], "model.lora with parallel.engine=deepspeed"),
    ("lora_negative_rank", ["model.lora.rank=-1"], "model.lora"),
    ("lora_with_muon", ["model.lora.rank=4", "optim=muon"], "optim=muon with model.lora"),
]


# Modules only the training path imports: seeing one means the run got past validation.
WORK_MODULES = (
    "launcher.trainer",
    "launcher.callbacks",
    "launcher.data",
    "launcher.checkpoint",
    "launcher.train_modules",
    "data_pipeline.embedded",
)


@pytest.fixture(scope="module")
def outcomes(shards, tmp_path_factory):
    """Run every bad config, four at a time (each is mostly interpreter start-up), keyed by case id."""
    tmp = tmp_path_factory.mktemp("bad_configs")

    def one(case):
        name, overrides, _ = case
        case_dir = tmp / name
        case_dir.mkdir()
        start = time.monotonic()
        result = run_train(
            tiny_overrides(shards, case_dir / "run") + overrides, case_dir, timeout=120, PYTHONPROFILEIMPORTTIME="1"
        )
        return name, (result, time.monotonic() - start, case_dir / "run")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, BAD_CONFIGS))


@pytest.mark.parametrize("name, expected", [(c[0], c[2]) for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_fails_before_any_work(name, expected, outcomes):
    result, elapsed, run_dir = outcomes[name]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert expected in output, output[-3000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
    }
    assert imported, "PYTHONPROFILEIMPORTTIME produced no import log"
    started = [m for m in WORK_MODULES if m in imported]
    assert not started, f"config rejected only after {started} were imported"
    assert not (run_dir / "checkpoints").exists(), "a bad config must stop before any work"
    # 5 s on an idle 2-core machine (about 3 s measured); the margin absorbs a CI machine busy with other tests.
    assert elapsed < 60, f"took {elapsed:.1f} s to reject the config"


@pytest.mark.parametrize("overrides, expected", [c[1:] for c in MORE_BAD_CONFIGS], ids=[c[0] for c in MORE_BAD_CONFIGS])
def test_more_bad_configs_are_rejected_by_validate(overrides, expected, shards, tmp_path):
    from hydra import compose, initialize_config_dir

    import launcher.train  # noqa: F401 - registers the schema and the run-dir resolver, as the entry point does
    from launcher.validation import ConfigError, validate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=tiny_overrides(shards, tmp_path / "run") + overrides)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(cfg, world_size=1)


def test_the_tiny_config_itself_is_valid(shards, tmp_path):
    from hydra import compose, initialize_config_dir

    import launcher.train  # noqa: F401
    from launcher.validation import validate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        validate(compose("train", overrides=tiny_overrides(shards, tmp_path / "run")), world_size=1)
