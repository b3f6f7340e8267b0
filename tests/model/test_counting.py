"""model.counting (and model.peak_flops) against hand calculations (the arithmetic is written out next to each
expected number). The memory/time estimate of a layout is tested in tests/parallel/test_estimate.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from model.config import ModelConfig, MoEConfig
from model.counting import (
    count_parameters,
    flops_per_token,
    kv_cache_elements_per_token,
    parameter_counts,
)
from model.peak_flops import peak_flops

REPO = Path(__file__).resolve().parents[2]


def load_model_yaml(name: str) -> ModelConfig:
    path = REPO / "configs" / "model" / f"{name}.yaml"
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
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
    counts = parameter_counts(load_model_yaml("mixtral_8x7b"))
    assert counts.active == 12_617_777_152 + 2 * 131_072_000 + 4096
    assert counts.total == 46_702_792_704


def test_moe_parameters_by_hand() -> None:
    moe = dataclasses.replace(SMALL, moe=MoEConfig(num_experts=4, top_k=2, expert_hidden_dim=32))
    # per layer: attention 16384, norms 128, router 64*4 = 256, experts 4 * 3*64*32 = 24576
    assert count_parameters(moe) == 6400 + 2 * (16384 + 128 + 256 + 24576) + 64 + 6400


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H200", 989),
        ("H100 SXM", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100-PCIE-40GB", 312),
        ("cpu", None),
        ("NVIDIA A10G", None),
    ],
)
def test_peak_flops(name: str, tflops: float | None) -> None:
    assert peak_flops(name) == (None if tflops is None else tflops * 1e12)


def test_latent_attention_parameters_flops_and_cache_by_hand() -> None:
    from model.config import MLAConfig

    cfg = ModelConfig(
        name="mla",
        vocab_size=100,
        dim=64,
        n_layers=1,
        n_heads=4,
        hidden_dim=32,
        max_seq_len=32,
        mla=MLAConfig(kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12),
    )
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
