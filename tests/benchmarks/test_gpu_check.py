"""benchmarks/gpu_check.py end to end on CPU (`--device cpu --tiny`): the command the GPU machine runs, so CI
proves the script (its figures mean nothing here). One run serves every test of the module; the unit tests below
it show the comparisons fail when they should and that the reference loop builds Loom's shapes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import gpu_check
import pytest
import reference_train
import torch

REPO = gpu_check.REPO
CHECKS = {
    "no_host_sync_in_step",
    "fp32_single_vs_fsdp",
    "fp32_single_vs_compiled",
    "bf16_vs_fp32_at_step_30",
    "resume_continues_bitwise",
    "cached_generation_equals_uncached",
    "hf_export_loads_in_transformers",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "results" / "gpu_results.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(out),
            "--work-dir",
            str(tmp / "work"),
            "--budget-s",
            "500",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    return json.loads(out.read_text()), result.stdout, out


@pytest.mark.timeout(600)
def test_every_correctness_check_ran_and_compared_numbers(tiny_run):
    results, _, _ = tiny_run
    checks = {c["name"]: c for c in results["correctness"]}
    assert set(checks) == CHECKS and all(c["passed"] for c in checks.values()) and results["correctness_passed"]
    for name in ("fp32_single_vs_fsdp", "fp32_single_vs_compiled"):
        c = checks[name]
        assert c["steps"] == 30 and c["max_rel_loss_diff"] <= 1e-4 and c["max_rel_weight_diff"] <= 1e-4
        assert c["tensors"] == 21  # every parameter of the 2-layer model was compared
    bf16 = checks["bf16_vs_fp32_at_step_30"]
    assert bf16["step"] == 30 and bf16["rel_diff"] <= 0.02 and bf16["bf16_differs_from_fp32"]
    assert bf16["fp32_loss"] < 0.8 * bf16["fp32_first_loss"]  # the model learned, so 2% means something
    resume = checks["resume_continues_bitwise"]
    assert resume["steps"] == [16, 30] and resume["losses_and_grad_norms_equal"] and resume["weights_equal"]
    generation = checks["cached_generation_equals_uncached"]
    assert generation["cached"] == generation["uncached"] and [len(t) for t in generation["cached"]] == [20, 20]
    hf = checks["hf_export_loads_in_transformers"]
    assert hf["hf_class"] == "LlamaForCausalLM" and hf["max_rel_logit_diff"] <= 1e-4
    assert checks["no_host_sync_in_step"]["syncs"] == {"single fp32": [], "single bf16": [], "fsdp bf16": []}


@pytest.mark.timeout(600)
def test_rows_have_every_field_and_both_sides_train_the_same_shape(tiny_run):
    results, stdout, _ = tiny_run
    assert results["ok"] and results["mode"] == "tiny" and results["compile_backend"] == "aot_eager"
    for key in ("device", "torch", "date", "commit", "command", "elapsed_s"):
        assert results[key], key
    rows = results["rows"]
    assert [(r["config"], r["system"]) for r in rows] == [("llama3_1b", "reference"), ("llama3_1b", "loom")]
    for row in rows:
        assert set(gpu_check.ROW_FIELDS) <= set(row), set(gpu_check.ROW_FIELDS) - set(row)
        assert row["status"] == "ok" and row["tokens_per_sec"] > 0 and row["peak_mem_gib"] > 0
        assert row["mfu"] is None  # no peak FLOP/s for a CPU: no made-up MFU
    reference, loom = rows
    for key in ("config", "batch", "seq", "model_overrides", "params"):
        assert reference[key] == loom[key], key
    assert (reference["batch"], reference["seq"]) == (4, 64) and reference["params"] == 90_432
    assert reference["timed_steps"] == loom["timed_steps"] == 6 and loom["windows"] == 3
    assert loom["stopped_before_final_checkpoint"]  # the end-of-run checkpoint is not waited for
    assert math.isclose(loom["ratio_vs_reference"], loom["tokens_per_sec"] / reference["tokens_per_sec"])
    # Loom's figure is what its metrics log shows a user, and the wall clock agrees with it within 5%.
    assert abs(loom["logged_vs_wallclock"] - 1) <= 0.05, loom
    assert "loom (single, compile(model))" in stdout and "| llama3_1b | 4 x 64 | reference |" in stdout
    skipped = {s["job"] for s in results["skipped"]}
    assert {"llama3_1b loom fsdp", "llama3_1b loom float8", "gpt2_124m reference", "gpt2_124m loom"} <= skipped
    assert results["profile"]["exit"] == 0 and results["profile"]["summary"].startswith("profiled 2 steps")


@pytest.mark.timeout(600)
def test_logs_of_every_run_are_collected(tiny_run):
    _, _, out = tiny_run
    logs = (out.parent / "gpu_check_logs.txt").read_text()
    for name in (
        "correctness_fp32",
        "correctness_fsdp",
        "correctness_compiled",
        "correctness_bf16",
        "correctness_resumed",
        "reference_llama3_1b",
        "profile_llama3_1b",
    ):
        assert f"===== {name} " in logs, name


# ------------------------------------------------------------------------------------------------ units
def test_comparisons_fail_on_a_small_difference():
    losses = {s: 5.0 - 0.1 * s for s in range(1, 31)}
    assert gpu_check.compare_losses(dict(losses), losses, 1e-4)[0]
    nudged = {**losses, 17: losses[17] * (1 + 2e-4)}
    ok, detail = gpu_check.compare_losses(nudged, losses, 1e-4)
    assert not ok and detail["max_rel_loss_diff"] == pytest.approx(2e-4)
    assert not gpu_check.compare_losses({s: v for s, v in losses.items() if s != 30}, losses, 1e-4)[0]

    weights = {"a": torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), "b": torch.ones(4)}
    assert gpu_check.compare_weights({k: v.clone() for k, v in weights.items()}, weights, 1e-4)[0]
    moved = {"a": weights["a"].clone(), "b": weights["b"] + 1e-3}
    ok, detail = gpu_check.compare_weights(moved, weights, 1e-4)
    assert not ok and detail["worst_tensor"] == "b"
    assert not gpu_check.compare_weights({"a": weights["a"]}, weights, 1e-4)[0]


def test_bf16_check_needs_a_real_bf16_run_that_learned():
    fp32 = {s: 5.0 - 0.05 * s for s in range(1, 31)}
    assert gpu_check.bf16_check({s: v * 1.01 for s, v in fp32.items()}, fp32)[0]
    assert not gpu_check.bf16_check({s: v * 1.03 for s, v in fp32.items()}, fp32)[0]  # off by 3%
    assert not gpu_check.bf16_check(dict(fp32), fp32)[0]  # identical: bf16 was not in use
    flat = {s: 5.0 for s in range(1, 31)}
    assert not gpu_check.bf16_check({s: 5.001 for s in flat}, flat)[0]  # nothing learned: 2% says nothing


def resolved(name: str, **overrides) -> dict:
    """Loom's model config with every key, as gpu_check hands it to the reference loop."""
    import dataclasses

    return dataclasses.asdict(gpu_check.loom_model_config(name, overrides))


@pytest.mark.parametrize("name", ["gpt2_124m", "llama3_1b", "gpt2_1.5b"])
def test_reference_model_has_loom_parameter_count(name):
    from model.counting import count_parameters

    shape = reference_train.load_shape(resolved(name))
    with torch.device("meta"):
        model = reference_train.GPT(shape, 1024)
    assert reference_train.count_parameters(model) == count_parameters(gpu_check.loom_model_config(name, {}))


def test_reference_rope_matches_loom_llama3_scaling():
    from model.blocks.rope import rope_cos_sin

    cfg = gpu_check.loom_model_config("llama3_1b", {})
    cos, sin = reference_train.rope_tables(reference_train.load_shape(resolved("llama3_1b")), 4096)
    want_cos, want_sin = rope_cos_sin(cfg.attn_head_dim, 4096, cfg.rope_theta, cfg.rope_scaling)
    torch.testing.assert_close(cos, want_cos, atol=1e-3, rtol=0)
    torch.testing.assert_close(sin, want_sin, atol=1e-3, rtol=0)


def test_reference_gpt2_family_trains(capsys, tmp_path):
    """The GPT-2 family (learned positions, LayerNorm, GELU, biases), which the tiny end-to-end run leaves out."""
    model_json = tmp_path / "gpt2.json"
    model_json.write_text(
        json.dumps(resolved("gpt2_124m", dim=32, n_layers=1, n_heads=2, vocab_size=128, hidden_dim=128))
    )
    reference_train.main(
        [
            "--model-json",
            str(model_json),
            "--batch",
            "2",
            "--seq",
            "16",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--no-compile",
            "--precision",
            "fp32",
            "--device",
            "cpu",
            "--lr",
            "1e-2",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["params"] == 32 * 128 + 1024 * 32 + (4 * 32 * 32 + 4 * 32) + (8 * 32 * 32 + 5 * 32) + 3 * 64
    assert result["timed_steps"] == 2 and result["tokens_per_sec"] > 0 and math.isfinite(result["last_loss"])
    assert abs(result["first_loss"] - math.log(128)) < 0.1


def test_reference_refuses_what_it_does_not_implement():
    with pytest.raises(SystemExit, match="sliding_window"):
        reference_train.load_shape(resolved("llama3_1b", sliding_window=128))
    with pytest.raises(SystemExit, match="GPT-2"):
        reference_train.load_shape(resolved("gpt2_124m", norm_type="rmsnorm"))
