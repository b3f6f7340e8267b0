"""`python -m launcher.estimate`: composes the training config itself, so training's overrides are accepted as is
and a layout training refuses is refused with training's own message (ParallelDims.from_config's rule)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config import DataConfig, EstimateConfig, TrainConfig, TrainerConfig
from launcher.run_estimate import estimate_training_config
from launcher.validation import ConfigError, validate
from model.config import ModelConfig
from parallel.config import ParallelConfig

REPO = Path(__file__).resolve().parents[2]
SMALL = ModelConfig(name="small", vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_seq_len=32)


def configs(num_gpus: int, **sections) -> tuple[TrainConfig, EstimateConfig]:
    """The same training keys as a TrainConfig (what launcher.train validates) and as an EstimateConfig."""
    keys = {
        "model": SMALL,
        "data": DataConfig(seq_len=32),
        "trainer": TrainerConfig(micro_batch_size=1, global_batch_size=num_gpus),
        **sections,
    }
    return TrainConfig(**keys), EstimateConfig(num_gpus=num_gpus, **keys)


@pytest.mark.parametrize(
    "num_gpus, layout, message",
    [
        (3, ParallelConfig(tp=3), "model n_heads=4 is not divisible by parallel.tp=3"),
        (2, ParallelConfig(dp_shard=2, zero_stage=2), "need parallel.engine=deepspeed"),
        (2, ParallelConfig(ep=2, dp_shard=2), "needs an MoE model"),
        (2, ParallelConfig(pp=2, pp_microbatches=1), "pp_microbatches=1 >= parallel.pp=2"),
        (4, ParallelConfig(dp_shard=2), "parallel degrees multiply to 2"),
    ],
)
def test_invalid_layout_is_refused_with_trainings_message(num_gpus: int, layout: ParallelConfig, message: str) -> None:
    train, est = configs(num_gpus, parallel=layout)
    with pytest.raises(ConfigError) as by_training:
        validate(train, num_gpus)
    with pytest.raises(ConfigError) as by_estimate:
        estimate_training_config(est)
    assert str(by_estimate.value) == str(by_training.value)
    assert message in str(by_estimate.value)


def test_training_keys_not_only_layout_keys_are_checked() -> None:
    _, est = configs(1, data=DataConfig(seq_len=64))
    with pytest.raises(ConfigError, match="data.seq_len=64 exceeds model.max_seq_len=32"):
        estimate_training_config(est)


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launcher.estimate", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_prints_json_with_required_keys() -> None:
    done = run_cli(
        "model=llama3_8b",
        "parallel=fsdp",
        "parallel.dp_shard=8",
        "data.seq_len=8192",
        "parallel.ac_mode=full",
        "trainer.micro_batch_size=1",
        "trainer.global_batch_size=8",
        "format=json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in (
        "params_total",
        "params_active",
        "params_embedding",
        "train_flops_per_token",
        "memory_per_gpu_gib",
        "time_to_train_hours",
        "tokens_per_second",
    ):
        assert key in report
    assert report["params_total"] == 8_030_261_248
    assert report["train_flops_per_token"] == 45_029_548_032 + 12_884_901_888
    assert set(report["memory_per_gpu_gib"]) == {"weights", "gradients", "optimizer", "activations", "total"}
    assert report["layout"]["num_gpus"] == 8 and report["layout"]["sharding"] == "fsdp"


def test_cli_table_and_bad_key() -> None:
    done = run_cli("model=gpt2_124m")
    assert done.returncode == 0, done.stderr
    assert "124,439,808" in done.stdout and "memory/GPU total" in done.stdout
    bad = run_cli("model=gpt2_124m", "parallel.tp=5")
    assert bad.returncode == 2 and "n_heads=12 is not divisible by parallel.tp=5" in bad.stderr
    misspelt = run_cli("model=gpt2_124m", "micro_batch=2")
    assert misspelt.returncode != 0 and "micro_batch" in misspelt.stderr
    unsized = run_cli("parallel=fsdp")
    assert unsized.returncode == 2 and "give num_gpus=" in unsized.stderr
    assert not list(REPO.glob("train_rank*.log")), "the estimate wrote a log file"
