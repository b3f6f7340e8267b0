"""Every layout logs the same figures. A DeepSeek-V3-like tiny run (configs/model/deepseek_tiny.yaml: routed and
shared experts with auxiliary-loss-free balancing, and a multi-token-prediction module) trains 3 steps through the
real launcher under one process, FSDP x2 and ZeRO-2 x2: each writes the same metric keys, in the same order, to
metrics.jsonl, the MoE and MTP figures among them, and those figures agree with the single process's (same initial
weights, same global batch), so each layout logs the same quantity under the same name, not just some number.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launcher_testing import launch, tiny_overrides

pytestmark = pytest.mark.distributed

STEPS = 3
DEEPSEEK = {"model": "deepseek_tiny", "model.n_kv_heads": "null"}  # latent attention: every head its own K/V
MOE_AND_MTP = ("mtp_loss", "moe_aux_loss", "moe_router_z_loss", "moe_load_imbalance")
RTOL = 1e-5  # data parallel against one process over the first steps (DESIGN.md: layout parity's horizon)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory) -> dict[str, list[dict]]:
    logged = {}
    for name, nproc in (("single", 1), ("fsdp", 2), ("zero2", 2)):
        tmp = tmp_path_factory.mktemp(f"deepseek_{name}")
        launch(tiny_overrides(shards, tmp / "run", max_steps=STEPS, **DEEPSEEK, parallel=name), nproc, tmp)
        logged[name] = records(tmp / "run")
    return logged


@pytest.mark.parametrize("layout", ["fsdp", "zero2"])
def test_layout_logs_the_single_process_figures(runs, layout):
    want, got = runs["single"], runs[layout]
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for mine, theirs in zip(got, want):
        assert list(mine) == list(theirs), f"parallel={layout} step {mine['step']}: keys differ"
        assert set(MOE_AND_MTP) <= set(mine), f"parallel={layout} misses MoE/MTP figures: {sorted(mine)}"
        for key in ("loss", *MOE_AND_MTP):
            assert mine[key] == pytest.approx(theirs[key], rel=RTOL), f"parallel={layout} step {mine['step']}: {key}"
