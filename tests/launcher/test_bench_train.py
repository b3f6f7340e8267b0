"""The CPU twin of the GPU check (bf16 + torch.compile + FSDP on one device, tokens/s recorded): the same launcher
path through benchmarks/bench_train.py, on CPU with gloo, where CUDA's absence is the only difference. FSDP on one
process runs on a 1-rank mesh (parallel/dims.py `fsdp_one_rank`), so this is the code one GPU runs."""

from __future__ import annotations

import json
import math
import subprocess

from launcher_testing import PYTHON, REPO, child_env, losses, run_train, tiny_overrides


def test_bf16_compile_fsdp_one_rank_trains_and_reports_throughput(shards, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(
        shards,
        run_dir,
        max_steps=18,
        **{
            "trainer.log_every": 3,
            "trainer.precision": "bf16",
            "parallel": "fsdp",
            "parallel.fsdp_param_dtype": "bfloat16",
            "parallel.compile": "true",
        },
    )
    result = subprocess.run(
        [PYTHON, "benchmarks/bench_train.py", "--warmup-windows", "1", "--out", str(run_dir), "--", *overrides],
        cwd=REPO,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    summary = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert summary["windows"] == 5 and summary["steps"] == [6, 18]
    assert summary["tokens_per_sec"] > 0 and summary["peak_mem_gib"] > 0
    # It trains like the fp32 single-process run of the same data and seed: close at every step, not identical
    # (so bf16 was really used), and both learn.
    reference = run_train(tiny_overrides(shards, tmp_path / "fp32", max_steps=18, **{"trainer.log_every": 3}), tmp_path)
    assert reference.returncode == 0, reference.stderr[-4000:]
    got, want = losses(run_dir), losses(tmp_path / "fp32")
    assert got.keys() == want.keys()
    assert all(abs(got[s] - want[s]) <= 0.02 * want[s] for s in want), (got, want)
    assert got != want
    assert want[18] < want[3] - 0.2, want
    assert "| CPU (" in result.stdout  # the RESULTS.md row
    assert (run_dir / "checkpoints" / "step_00000018" / "COMPLETE").exists()


def test_synthetic_data_trains_through_the_launcher(shards, tmp_path):
    """data=synthetic (the benchmarks' data): uniform tokens of the model's vocabulary, so the loss sits at ln(V)."""
    overrides = [o for o in tiny_overrides(shards, tmp_path / "run", max_steps=4) if not o.startswith("data")]
    result = run_train([*overrides, "data=synthetic", "data.seq_len=32"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert all(abs(loss - math.log(256)) < 0.05 * math.log(256) for loss in losses(tmp_path / "run").values())
