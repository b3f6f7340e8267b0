"""gpu_check.py's optional rows for the model's speed options, without a run: each is a launcher command line the
launcher accepts for the GPU shapes, they come after the required rows in the order planned, `--jobs` picks them
by name, and each option row is compared with Loom's primary row of its shape."""

from __future__ import annotations

from pathlib import Path

import gpu_check
import pytest

REPO = gpu_check.REPO


def gpu_context(tmp_path: Path) -> "gpu_check.Context":
    return gpu_check.Context(
        device="cuda",
        tiny=False,
        work=tmp_path,
        log_dir=tmp_path,
        budget=gpu_check.Budget(480),
        compile_backend="inductor",
    )


def test_option_rows_follow_the_required_rows_in_order(tmp_path):
    required, optional = gpu_check.plan_jobs(gpu_context(tmp_path), float8_problem=None)
    assert all(j.required for j in required) and not any(j.required for j in optional)
    names = [j.name for j in optional]
    assert names == [
        "gpt2_124m loom fsdp",
        "llama3_1b loom float8",
        "gpt2_124m loom fused projections",
        "gpt2_124m loom vocab padded to 128",
        "llama3_1b loom fused projections",
        "llama3_1b window loom",
        "llama3_1b window loom flex attention",
        "llama3_1b documents loom",
        "llama3_1b documents loom flex attention",
        "gpt2_1.5b reference",
        "gpt2_1.5b loom",
    ]
    picked = gpu_check.select_jobs(optional, "window, fused")
    assert [j.name for j in picked] == [
        "gpt2_124m loom fused projections",
        "llama3_1b loom fused projections",
        "llama3_1b window loom",
        "llama3_1b window loom flex attention",
    ]
    assert gpu_check.select_jobs(required, "window") == [] and gpu_check.select_jobs(required, None) == required


def test_every_option_row_is_a_config_the_launcher_accepts(tmp_path, monkeypatch):
    """The overrides each optional Loom row hands bench_train, composed by Hydra and validated by the launcher for
    one process, as `python -m launcher.train` would before starting."""
    from hydra import compose, initialize_config_dir

    import launcher.train  # noqa: F401 - registers the schema and resolvers, as the entry point does
    from launcher.validation import validate

    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = gpu_context(tmp_path)
    _, optional = gpu_check.plan_jobs(ctx, float8_problem=None)
    checked = {}
    for job in (j for j in optional if j.system == "loom"):
        overrides = gpu_check.loom_overrides(ctx, job.shape, job.variant, 40, 10) + [f"trainer.run_dir={tmp_path}"]
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        plan = validate(cfg, world_size=1)
        checked[job.name] = plan.cfg.model
    assert checked["gpt2_124m loom fused projections"].fused_projections
    assert checked["gpt2_124m loom vocab padded to 128"].padded_vocab_size == 50304
    flex = checked["llama3_1b documents loom flex attention"]
    assert flex.attention_backend == "flex" and flex.document_mask_eos_id == 0
    assert checked["llama3_1b window loom"].sliding_window == 512


def test_option_rows_are_compared_with_the_primary_row_of_their_shape():
    env = {"device": "d", "torch": "t", "date": "now", "commit": "c"}
    masked = {"sliding_window": 512}

    def row(system, variant, tps, overrides=None, shape=""):
        return {
            "config": "llama3_1b",
            "shape": shape,
            "batch": 8,
            "seq": 2048,
            "model_overrides": overrides or {},
            "system": system,
            "variant": variant,
            "tokens_per_sec": tps,
            "peak_mem_gib": 1.0,
            "status": "ok",
            **env,
        }

    primary = gpu_check.LOOM_PRIMARY
    rows = [
        row("reference", None, 100.0),
        row("loom", primary, 120.0),
        row("loom", f"{primary}, fused projections", 126.0),
        row("loom", primary, 90.0, masked, "window"),
        row("loom", f"{primary}, flex attention", 135.0, masked, "window"),
    ]
    gpu_check.add_mfu_and_ratios(rows, peak_flops=None)
    assert [r["ratio_vs_reference"] for r in rows] == [1.0, 1.2, 1.26, None, None]
    assert [r["ratio_vs_loom_primary"] for r in rows] == [None, 1.0, pytest.approx(1.05), 1.0, 1.5]
    table = gpu_check.results_table(rows)
    assert "| llama3_1b (window) | 8 x 2048 | loom (single, compile(model), flex attention) |" in table
    assert "| 1.500x |" in table
