"""model.estimate against hand calculations (the arithmetic is written out next to each expected number)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from model.config import ModelConfig, MoEConfig
from model.estimate import (
    EstimateConfig,
    count_parameters,
    estimate,
    estimate_memory,
    flops_per_token,
    peak_flops,
    stage_memory,
)
REPO = Path(__file__).resolve().parents[2]


def load_model_yaml(name: str) -> ModelConfig:
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "configs" / "model" / f"{name}.yaml"))
    return OmegaConf.to_object(merged)

# vocab 100, dim 64, 2 layers, 4 heads (MHA), SwiGLU hidden 128, untied:
#   embedding 100*64 = 6400; per layer: attention 4*64*64 = 16384, norms 2*64 = 128, FFN 3*64*128 = 24576
#   -> 41088; final norm 64; output 6400. Total 6400 + 2*41088 + 64 + 6400 = 95040.
SMALL = ModelConfig(name="small", vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_seq_len=32)


def test_small_model_parameters_by_hand() -> None:
    assert count_parameters(SMALL) == 95040
    assert count_parameters(SMALL, exclude_embedding=True) == 95040 - 6400


def test_accepts_hydra_nodes_and_dicts() -> None:
    node = OmegaConf.structured(load_model_yaml("mixtral_8x7b"))
    assert count_parameters(node) == count_parameters(OmegaConf.to_container(node)) == 46_702_792_704
    assert count_parameters(dataclasses.asdict(SMALL), active=True) == 95040


def test_flops_per_token_llama3_8b() -> None:
    # N = 8,030,261,248 - 128256*4096 (525,336,576 input embedding) = 7,504,924,672; 6N = 45,029,548,032
    # attention 12 * 32 layers * (32*128) * 8192 = 12,884,901,888
    assert flops_per_token(load_model_yaml("llama3_8b"), 8192) == 45_029_548_032 + 12_884_901_888


def test_flops_per_token_tied_gpt2_counts_the_output_matmul() -> None:
    # tied: N = 124,439,808 - (50257*768 + 1024*768) + 50257*768 = 124,439,808 - 786,432 = 123,653,376
    # 6N = 741,920,256; attention 12 * 12 * 768 * 1024 = 113,246,208
    assert flops_per_token(load_model_yaml("gpt2_124m"), 1024) == 741_920_256 + 113_246_208


def test_flops_per_token_sliding_window_caps_the_context() -> None:
    # N = 7,241,732,096 - 32000*4096 = 7,110,660,096; 6N = 42,663,960,576; T = min(8192, 4096)
    mistral = load_model_yaml("mistral_7b")
    assert flops_per_token(mistral, 8192) == 42_663_960_576 + 12 * 32 * 4096 * 4096
    assert flops_per_token(mistral, 2048) == 42_663_960_576 + 12 * 32 * 4096 * 2048


def test_mixtral_active_parameters() -> None:
    # per layer: attention 4096*(4096 + 2*1024) + 4096*4096 = 41,943,040; norms 8192; router 4096*8 = 32768;
    # two of eight experts 2 * 3*4096*14336 = 352,321,536 -> 394,305,536 * 32 = 12,617,777,152
    # + embedding 131,072,000 + output 131,072,000 + final norm 4096
    report = estimate(EstimateConfig(model=load_model_yaml("mixtral_8x7b"), seq_len=4096, dp=8, ep=8, fsdp=True))
    assert report["params_active"] == 12_617_777_152 + 2 * 131_072_000 + 4096
    assert report["params_total"] == 46_702_792_704


def test_memory_zero1_by_hand() -> None:
    est = EstimateConfig(model=SMALL, dp=4, zero_stage=1, micro_batch_size=2, seq_len=32)
    mem = estimate_memory(est)
    assert mem.weights == 95040 * 2  # bf16, replicated
    assert mem.gradients == 95040 * 2  # bf16, replicated
    assert mem.optimizer == 95040 * (4 + 2 * 4) / 4  # fp32 master + 2 fp32 moments, sharded over dp=4
    # per layer and token: attention 2*64 + 2*64 + 2*64 = 384, SwiGLU 2*64 + 3*128 = 512 -> 896; 2 layers,
    # 2*32 tokens, 2 bytes = 229,376; plus fp32 logits of one 64-token chunk and their gradient 2*64*100*4 = 51,200
    assert mem.activations == 229_376 + 51_200


def test_memory_fsdp_by_hand() -> None:
    mem = estimate_memory(EstimateConfig(model=SMALL, dp=4, fsdp=True, micro_batch_size=2, seq_len=32))
    assert mem.weights == 95040 * 2 / 4 + 2 * 41088 * 2  # sharded + the gathered and the prefetched layer
    assert mem.gradients == 95040 * 2 / 4
    assert mem.optimizer == 95040 * 12 / 4


def test_memory_tp_pp_full_checkpointing_by_hand() -> None:
    est = EstimateConfig(model=SMALL, tp=2, pp=2, micro_batch_size=2, seq_len=32, activation_checkpointing="full")
    # stage 0: layer 0 split by tp, norms replicated, embedding split: (16384 + 24576)/2 + 128 + 6400/2 = 23808
    # stage 1: layer 1 + final norm + output/2: 20480 + 128 + 64 + 3200 = 23872
    first, last = stage_memory(est, 0), stage_memory(est, 1)
    assert (first.weights, first.gradients, first.optimizer) == (23808 * 2, 23808 * 2, 23808 * 12)
    assert (last.weights, last.gradients, last.optimizer) == (23872 * 2, 23872 * 2, 23872 * 12)
    # 2*32/tp = 32 tokens per GPU. Stage 0 holds 2 micro-batches of its layer input (64) + one recomputed layer (896);
    # stage 1 holds 1, plus the logits chunk 2 * 64 * (100/2) * 4.
    assert first.activations == (2 * 64 + 896) * 32 * 2
    assert last.activations == (64 + 896) * 32 * 2 + 2 * 64 * 50 * 4
    assert estimate_memory(est) == last  # the larger stage


def test_memory_expert_parallel_fsdp_by_hand() -> None:
    moe = dataclasses.replace(SMALL, moe=MoEConfig(num_experts=4, top_k=2, expert_hidden_dim=32))
    # per layer: attention 16384, norms 128, router 64*4 = 256, experts 4 * 3*64*32 = 24576
    assert count_parameters(moe) == 6400 + 2 * (16384 + 128 + 256 + 24576) + 64 + 6400
    mem = estimate_memory(EstimateConfig(model=moe, dp=4, ep=2, fsdp=True, micro_batch_size=2, seq_len=32))
    dense = 2 * (16384 + 128 + 256) + 6400 + 64 + 6400  # everything but the routed experts: 46400
    experts = 2 * 24576 / 2  # ep=2: each GPU holds half of each layer's experts
    sharded = dense / 4 + experts / (4 // 2)  # dense over dp=4, experts over dp/ep=2
    gathered_layer = 16384 + 128 + 256 + 24576 / 2
    assert mem.weights == sharded * 2 + 2 * gathered_layer * 2
    assert mem.gradients == sharded * 2
    assert mem.optimizer == sharded * 12


def test_time_to_train_by_hand() -> None:
    est = EstimateConfig(model=load_model_yaml("llama3_8b"), seq_len=8192, dp=64, fsdp=True, tokens=1e12,
                         gpu="H100 SXM", mfu=0.5)
    report = estimate(est)
    seconds = 1e12 * (45_029_548_032 + 12_884_901_888) / (64 * 989e12 * 0.5)
    assert report["time_to_train_hours"] == pytest.approx(seconds / 3600, rel=1e-12)
    assert report["gpu_hours"] == pytest.approx(64 * seconds / 3600, rel=1e-12)
    assert estimate(EstimateConfig(model=SMALL, gpu="cpu"))["time_to_train_hours"] is None


@pytest.mark.parametrize(
    "name, tflops",
    [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989), ("H100 SXM", 989),
     ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312), ("cpu", None), ("NVIDIA A10G", None)],
)
def test_peak_flops(name: str, tflops: float | None) -> None:
    assert peak_flops(name) == (None if tflops is None else tflops * 1e12)


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(tp=3), "tp=3 must divide"), (dict(fsdp=True, zero_stage=2), "set one of them"),
     (dict(seq_len=64), "exceeds model.max_seq_len"), (dict(activation_checkpointing="some"), "none|selective|full"),
     (dict(ep=2, dp=2), "MoE")],
)
def test_bad_layout_is_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(EstimateConfig(model=SMALL, **overrides))


def run_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model.estimate", *overrides], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_cli_prints_json_with_required_keys() -> None:
    done = run_cli("model=llama3_8b", "dp=8", "fsdp=true", "seq_len=8192", "activation_checkpointing=full",
                   "format=json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("params_total", "params_active", "params_embedding", "train_flops_per_token", "memory_per_gpu_gib",
                "time_to_train_hours", "tokens_per_second"):
        assert key in report
    assert report["params_total"] == 8_030_261_248
    assert report["train_flops_per_token"] == 45_029_548_032 + 12_884_901_888
    assert set(report["memory_per_gpu_gib"]) == {"weights", "gradients", "optimizer", "activations", "total"}
    assert report["layout"]["num_gpus"] == 8 and report["layout"]["sharding"] == "fsdp"


def test_cli_table_and_bad_key() -> None:
    done = run_cli("model=gpt2_124m")
    assert done.returncode == 0, done.stderr
    assert "124,439,808" in done.stdout and "memory/GPU total" in done.stdout
    bad = run_cli("model=gpt2_124m", "tp=5")
    assert bad.returncode != 0 and "tp=5 must divide" in bad.stderr
    misspelt = run_cli("model=gpt2_124m", "micro_batch=2")
    assert misspelt.returncode != 0 and "micro_batch" in misspelt.stderr


def test_latent_attention_parameters_flops_and_cache_by_hand() -> None:
    from model.config import MLAConfig
    from model.estimate import kv_cache_elements_per_token

    cfg = ModelConfig(name="mla", vocab_size=100, dim=64, n_layers=1, n_heads=4, hidden_dim=32, max_seq_len=32,
                      mla=MLAConfig(kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                    v_head_dim=12))
    # split by tp: wo 4*12*64 = 3072, wkv_b 16*4*(16+12) = 1792, wq_b 24*4*(16+8) = 2304 -> 7168
    # replicated: wkv_a 64*(16+8) = 1536, wq_a 64*24 = 1536 -> 3072; norms 2*64 + 16 + 24 = 168; FFN 3*64*32 = 6144
    layer = 7168 + 3072 + 168 + 6144
    assert count_parameters(cfg) == layer + 6400 + 64 + 6400
    # 6 * (total - input embedding) + 6 * T * heads * (qk 24 + v 12) at T = 32
    assert flops_per_token(cfg, 32) == 6 * (layer + 64 + 6400) + 6 * 32 * 4 * (24 + 12)
    assert kv_cache_elements_per_token(cfg) == 16 + 8
    assert kv_cache_elements_per_token(SMALL) == 2 * (2 * 4 * 16)


def test_per_layer_windows_cap_each_layers_context() -> None:
    # Gemma-style: layers 0 and 2 slide over 8 tokens, layer 1 (and 3) attend globally; T = 32
    cfg = dataclasses.replace(SMALL, n_layers=4, sliding_window=8, sliding_window_pattern=2)
    n = count_parameters(cfg) - 6400
    assert flops_per_token(cfg, 32) == 6 * n + 12 * 64 * (8 + 32 + 8 + 32)
