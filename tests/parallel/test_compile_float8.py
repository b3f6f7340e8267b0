"""Whole-model compile and float8 Linear layers: options that change speed, never what is trained.

`parallel.compile_scope=model` must train exactly like eager (one process and FSDP2 on a 1-rank mesh, the layout a
single GPU runs), with the same parameter names. `parallel.float8` (torchao's Float8Linear, run here through
torch's CPU float8 matmul) must really compute in float8 (losses close to fp32 but not equal) and keep the
checkpoint names. Compile uses the aot_eager backend: it traces with Dynamo and AOTAutograd like inductor does,
without building C++ kernels (tests/parallel/test_activation_checkpointing.py does the same).
"""

from __future__ import annotations

import pytest
import torch
from harness import RunSpec, assert_runs_match, load_parallel_config, run_layouts, train

pytestmark = pytest.mark.distributed

COMPILE_MODEL = {"compile": True, "compile_scope": "model", "compile_backend": "aot_eager"}
# Every Linear in the blocks has dimensions that are multiples of 16 (dim 64, head_dim 16, FFN 128).
FLOAT8_MODEL = {"dim": 64, "n_heads": 4, "n_kv_heads": 2, "hidden_dim": 128}


@pytest.fixture(scope="module")
def fsdp_results():
    """FSDP2 on a 1-rank mesh (needs a process group, so one spawn) with whole-model compile, and with float8."""
    specs = [
        RunSpec(layout="fsdp", overrides=COMPILE_MODEL, steps=4),
        RunSpec(layout="fsdp", overrides={"float8": "tensorwise"}, model_overrides=FLOAT8_MODEL, steps=4),
    ]
    return dict(zip(("compile", "float8"), run_layouts(specs))), specs


def test_whole_model_compile_trains_like_eager(reference_run):
    spec = RunSpec(overrides=COMPILE_MODEL, steps=4)
    assert_runs_match(train(spec), reference_run(spec), rtol=1e-5)


def test_whole_model_compile_under_fsdp_one_rank(fsdp_results, reference_run):
    results, specs = fsdp_results
    got = results["compile"]
    assert not isinstance(got, str), got
    assert_runs_match(got, reference_run(specs[0]), rtol=1e-5)


def test_whole_model_compile_wraps_the_model_not_each_block():
    from harness import build_model

    from parallel import ParallelDims, parallelize

    spec = RunSpec(overrides=COMPILE_MODEL)
    pcfg = spec.parallel_config()
    net = parallelize(build_model(spec), ParallelDims.from_config(pcfg, 1))
    assert net._compiled_call_impl is not None
    assert all(block._compiled_call_impl is None for block in net.layers.values())
    spec = RunSpec(overrides={**COMPILE_MODEL, "compile_scope": "block"})
    pcfg = spec.parallel_config()
    net = parallelize(build_model(spec), ParallelDims.from_config(pcfg, 1))
    assert net._compiled_call_impl is None
    assert all(block._compiled_call_impl is not None for block in net.layers.values())


def _float8_close_not_equal(got, ref):
    # float8 (e4m3 activations/weights, e5m2 gradients) is lossy: close to fp32 at every step, never identical.
    assert all(abs(g - r) <= 0.02 * r for g, r in zip(got.losses, ref.losses)), (got.losses, ref.losses)
    assert got.losses != ref.losses
    assert set(got.params) == set(ref.params)


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_trains_close_to_fp32_with_the_same_names(recipe, reference_run):
    pytest.importorskip("torchao", reason="torchao is in the dev extras (pip install -e '.[dev]')")
    spec = RunSpec(overrides={"float8": recipe}, model_overrides=FLOAT8_MODEL, steps=4)
    _float8_close_not_equal(train(spec), reference_run(spec))


def test_float8_under_fsdp_one_rank(fsdp_results, reference_run):
    pytest.importorskip("torchao")
    results, specs = fsdp_results
    got = results["float8"]
    assert not isinstance(got, str), got
    _float8_close_not_equal(got, reference_run(specs[1]))


def test_float8_swaps_only_the_blocks_linears():
    pytest.importorskip("torchao")
    from harness import build_model
    from torchao.float8.float8_linear import Float8Linear

    from parallel import ParallelDims, parallelize

    spec = RunSpec(overrides={"float8": "tensorwise"}, model_overrides=FLOAT8_MODEL)
    pcfg = spec.parallel_config()
    plain_names = set(build_model(spec).state_dict())
    net = parallelize(build_model(spec), ParallelDims.from_config(pcfg, 1))
    float8 = sorted(name for name, m in net.named_modules() if isinstance(m, Float8Linear))
    assert float8 == sorted(
        f"layers.{i}.{sub}"
        for i in range(2)
        for sub in (
            "attention.wq",
            "attention.wk",
            "attention.wv",
            "attention.wo",
            "feed_forward.w1",
            "feed_forward.w2",
            "feed_forward.w3",
        )
    ), float8
    assert type(net.output) is torch.nn.Linear
    assert set(net.state_dict()) == plain_names


def test_bad_compile_and_float8_options_fail_at_config_time(monkeypatch):
    from parallel import ParallelDims

    with pytest.raises(ValueError, match=r"parallel\.compile_scope='graph'"):
        ParallelDims.from_config(load_parallel_config("single", compile_scope="graph"), 1)
    with pytest.raises(ValueError, match=r"parallel\.float8='e4m3'"):
        ParallelDims.from_config(load_parallel_config("single", float8="e4m3"), 1)
    with pytest.raises(ValueError, match="tensor parallel"):
        ParallelDims.from_config(load_parallel_config("tp", float8="tensorwise"), 2)
    with pytest.raises(ValueError, match="DeepSpeed"):
        ParallelDims.from_config(load_parallel_config("zero2", float8="rowwise"), 2)
    from parallel.float8 import float8_supported

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    assert float8_supported("cuda") == (
        "NVIDIA A100-SXM4-80GB has compute capability 8.0; float8 matmuls need 8.9+ (Ada, Hopper, Blackwell)"
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert float8_supported("cuda") is None
