"""Per-layer health (trainer.layer_health, launcher/layer_health.py) through the real launcher: a tiny MoE
(configs/model/mixtral_tiny.yaml shrunk) trains 3 steps under one process, FSDP x2 and TP x2; every layout logs
each group's gradient norm and update/weight ratio, each block's max attention logit and router entropy, and
the figures agree with the single process's (same initial weights, same global batch): the norms are global,
not a rank's shard. The groups' gradient norms add up (in squares) to the logged total."""

from __future__ import annotations

import json
import math

import pytest
from launcher_testing import launch, tiny_overrides

pytestmark = pytest.mark.distributed

STEPS = 3
MOE = {"model": "mixtral_tiny", "model.moe.expert_hidden_dim": 32, "model.moe.aux_loss_weight": 0.0}
HEALTH = {"model.n_heads": 4, "model.n_kv_heads": 2, "trainer.layer_health": "true", "trainer.checkpoint_every": 0}
GROUPS = ("embed", "layer_0", "layer_1", "head")
BLOCKS = ("layer_0", "layer_1")
RTOL = {"fsdp": 1e-5, "tp": 1e-4}  # as tests/launcher/test_launcher_layouts.py: data parallel, sharded


def expected_keys() -> set[str]:
    return {
        *(f"layer_grad_norm/{g}" for g in GROUPS),
        *(f"layer_update_ratio/{g}" for g in GROUPS),
        *(f"layer_max_logit/{b}" for b in BLOCKS),
        *(f"layer_router_entropy/{b}" for b in BLOCKS),
    }


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory) -> dict[str, list[dict]]:
    logged = {}
    for name, nproc in (("single", 1), ("fsdp", 2), ("tp", 2)):
        tmp = tmp_path_factory.mktemp(f"health_{name}")
        launch(tiny_overrides(shards, tmp / "run", max_steps=STEPS, **MOE, **HEALTH, parallel=name), nproc, tmp)
        lines = (tmp / "run" / "metrics.jsonl").read_text().splitlines()
        logged[name] = [json.loads(line) for line in lines]
    return logged


def test_single_process_logs_every_group(runs):
    for record in runs["single"]:
        assert expected_keys() <= set(record), sorted(record)
        squares = sum(record[f"layer_grad_norm/{g}"] ** 2 for g in GROUPS)
        assert math.sqrt(squares) == pytest.approx(record["grad_norm"], rel=1e-5)
        assert all(record[f"layer_update_ratio/{g}"] > 0 for g in GROUPS)
        assert all(0 < record[f"layer_router_entropy/{b}"] <= math.log(4) for b in BLOCKS)  # 4 experts


@pytest.mark.parametrize("layout", ["fsdp", "tp"])
def test_layouts_log_the_single_process_figures(runs, layout):
    want, got = runs["single"], runs[layout]
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for mine, theirs in zip(got, want):
        assert expected_keys() <= set(mine), f"parallel={layout} misses figures: {sorted(mine)}"
        for key in sorted(expected_keys()):
            assert mine[key] == pytest.approx(theirs[key], rel=RTOL[layout]), f"{layout} step {mine['step']}: {key}"


def test_off_by_default_logs_none(shards, tmp_path):
    from launcher_testing import run_train

    result = run_train(tiny_overrides(shards, tmp_path / "run", max_steps=3), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert not any(key.startswith("layer_") for key in record)
