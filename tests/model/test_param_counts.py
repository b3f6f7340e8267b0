"""Published architectures have exactly their published parameter counts: by formula (model.estimate), in our model
built on the meta device, and in the transformers reference model built on meta from a config written here."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from model import build
from model.config import ModelConfig, MoEConfig
from model.estimate import count_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"

PUBLISHED = {  # from the model cards / HF `num_parameters()`
    "gpt2_124m": 124_439_808,
    "gpt2_1.5b": 1_557_611_200,
    "llama3_1b": 1_235_814_400,
    "llama3_8b": 8_030_261_248,
    "mistral_7b": 7_241_732_096,
    "mixtral_8x7b": 46_702_792_704,
}


def load_model_yaml(name: str) -> ModelConfig:
    """The YAML merged into the ModelConfig schema: an unknown key or a wrong type fails here, as under Hydra."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONFIGS / f"{name}.yaml"))
    return OmegaConf.to_object(merged)


def hf_reference_config(name: str):
    """The published HF configs, written out (no download)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, MixtralConfig

    if name == "gpt2_124m":
        return GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    if name == "gpt2_1.5b":
        return GPT2Config(vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25)
    if name == "llama3_1b":
        return LlamaConfig(
            vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
            num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        )
    if name == "llama3_8b":
        return LlamaConfig(
            vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    if name == "mistral_7b":
        return MistralConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, sliding_window=4096, max_position_embeddings=32768,
        )
    if name == "mixtral_8x7b":
        return MixtralConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        )
    raise KeyError(name)


def meta_numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    from transformers import AutoModelForCausalLM

    cfg = load_model_yaml(name)
    assert count_parameters(cfg) == PUBLISHED[name]
    with torch.device("meta"):
        ours = build(cfg)
        reference = AutoModelForCausalLM.from_config(hf_reference_config(name))
    assert meta_numel(ours) == PUBLISHED[name]
    assert meta_numel(reference) == PUBLISHED[name]


def test_published_shapes_details() -> None:
    """The architectural facts the counts alone would not catch."""
    l1b, l8b, mistral = load_model_yaml("llama3_1b"), load_model_yaml("llama3_8b"), load_model_yaml("mistral_7b")
    assert l1b.tie_embeddings and l1b.rope_scaling.type == "llama3" and l1b.rope_scaling.factor == 32.0
    assert l1b.rope_theta == l8b.rope_theta == 500000.0 and l8b.kv_heads == 8 and not l8b.tie_embeddings
    assert mistral.sliding_window == 4096 and mistral.rope_theta == 10000.0
    assert load_model_yaml("gpt2_124m").pos_embedding == "learned"
    # Meta's params.json sizing rule gives the FFN widths written explicitly in the YAML.
    assert ModelConfig(dim=4096, n_heads=32, ffn_dim_multiplier=1.3, multiple_of=1024).ffn_hidden_dim == l8b.hidden_dim
    assert ModelConfig(dim=2048, n_heads=32, ffn_dim_multiplier=1.5, multiple_of=256).ffn_hidden_dim == l1b.hidden_dim


VARIANTS = {
    "sandwich_qknorm_gqa": dict(norm_position="sandwich", qk_norm=True, n_kv_heads=2),
    "post_norm_layernorm_nobias": dict(norm_position="post", norm_type="layernorm", norm_bias=False),
    "learned_gelu_biases_untied": dict(pos_embedding="learned", mlp_type="gelu", mlp_bias=True, qkv_bias=True,
                                       attn_out_bias=True, norm_type="layernorm", norm_bias=True),
    "head_dim_override_tied": dict(head_dim=48, tie_embeddings=True, attn_out_bias=True),
    "moe_shared_first_dense": dict(moe=MoEConfig(num_experts=4, top_k=2, num_shared_experts=1, expert_hidden_dim=40,
                                                 shared_expert_hidden_dim=24, first_dense=1, every=2), n_layers=5),
    "moe_default_widths_mlp_bias": dict(moe=MoEConfig(num_experts=3, top_k=1), mlp_bias=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_formula_matches_our_model(variant: str) -> None:
    base = dict(name=variant, vocab_size=101, dim=64, n_layers=3, n_heads=4, max_seq_len=32)
    cfg = ModelConfig(**{**base, **VARIANTS[variant]})
    with torch.device("meta"):
        model = build(cfg)
    assert count_parameters(cfg) == meta_numel(model)
    embedding = model.tok_embeddings.weight.numel()
    embedding += model.pos_embeddings.weight.numel() if model.pos_embeddings is not None else 0
    assert count_parameters(cfg, exclude_embedding=True) == meta_numel(model) - embedding
    if cfg.moe is not None:  # inactive routed experts: (num_experts - top_k) of each MoE layer's experts
        inactive = sum(
            layer.moe.experts.w1.numel() * 3 * (cfg.moe.num_experts - cfg.moe.top_k) // cfg.moe.num_experts
            for layer in model.layers.values() if layer.moe is not None
        )
        assert count_parameters(cfg, active=True) == meta_numel(model) - inactive
    else:
        assert count_parameters(cfg, active=True) == meta_numel(model)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_model_yaml_formula_matches_our_model(name: str) -> None:
    cfg = load_model_yaml(name)
    with torch.device("meta"):
        assert count_parameters(cfg) == meta_numel(build(cfg))
