"""Published architectures have exactly their published parameter counts: by formula (model.counting), in our model
built on the meta device, and in the transformers reference model built on meta from a config written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from model import build
from model.config import ModelConfig, MoEConfig
from model.counting import count_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"

PUBLISHED = {  # from the model cards / HF `num_parameters()`
    "gpt2_124m": 124_439_808,
    "gpt2_1.5b": 1_557_611_200,
    "llama3_1b": 1_235_814_400,
    "llama3_8b": 8_030_261_248,
    "mistral_7b": 7_241_732_096,
    "mixtral_8x7b": 46_702_792_704,
    "qwen2.5_7b": 7_615_616_512,
    "qwen3_8b": 8_190_735_360,
    "qwen3_30b_a3b": 30_532_122_624,
    "deepseek_v2_lite": 15_706_484_224,
    # 671,026,419,200 with the 58 MoE layers' 256 selection biases, which transformers keeps as buffers
    "deepseek_v3": 671_026_404_352,
    "gemma2_9b": 9_241_705_984,
    "gemma3_4b": 3_880_263_168,  # the language model of the 4B (its vision tower is not counted)
    "olmo2_7b": 7_298_617_344,
    "phi3_mini": 3_821_079_552,
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
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )
    if name == "llama3_8b":
        return LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    if name == "mistral_7b":
        return MistralConfig(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            sliding_window=4096,
            max_position_embeddings=32768,
        )
    if name == "mixtral_8x7b":
        return MixtralConfig(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            num_local_experts=8,
            num_experts_per_tok=2,
        )
    return new_family_reference_config(name)


def new_family_reference_config(name: str):
    """The published config.json values of the families added with model/hf's family table."""
    import transformers as tf

    if name == "qwen2.5_7b":
        return tf.Qwen2Config(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=131072,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
    if name == "qwen3_8b":
        return tf.Qwen3Config(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
        )
    if name == "qwen3_30b_a3b":
        return tf.Qwen3MoeConfig(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            moe_intermediate_size=768,
            norm_topk_prob=True,
        )
    if name == "deepseek_v2_lite":
        return tf.DeepseekV2Config(
            vocab_size=102400,
            hidden_size=2048,
            intermediate_size=10944,
            moe_intermediate_size=1408,
            num_hidden_layers=27,
            num_attention_heads=16,
            num_key_value_heads=16,
            kv_lora_rank=512,
            q_lora_rank=None,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            n_routed_experts=64,
            n_shared_experts=2,
            num_experts_per_tok=6,
            first_k_dense_replace=1,
            topk_method="greedy",
            max_position_embeddings=163840,
        )
    if name == "deepseek_v3":
        return tf.DeepseekV3Config(
            vocab_size=129280,
            hidden_size=7168,
            intermediate_size=18432,
            moe_intermediate_size=2048,
            num_hidden_layers=61,
            num_attention_heads=128,
            num_key_value_heads=128,
            kv_lora_rank=512,
            q_lora_rank=1536,
            qk_nope_head_dim=128,
            qk_rope_head_dim=64,
            v_head_dim=128,
            n_routed_experts=256,
            n_shared_experts=1,
            num_experts_per_tok=8,
            first_k_dense_replace=3,
            n_group=8,
            topk_group=4,
            routed_scaling_factor=2.5,
            max_position_embeddings=163840,
        )
    if name == "gemma2_9b":
        return tf.Gemma2Config(
            vocab_size=256000,
            hidden_size=3584,
            intermediate_size=14336,
            num_hidden_layers=42,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
        )
    if name == "gemma3_4b":
        return tf.Gemma3TextConfig(
            vocab_size=262208,
            hidden_size=2560,
            intermediate_size=10240,
            num_hidden_layers=34,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            sliding_window=1024,
        )
    if name == "olmo2_7b":
        return tf.Olmo2Config(
            vocab_size=100352,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        )
    if name == "phi3_mini":
        return tf.Phi3Config(
            vocab_size=32064,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=131072,
            original_max_position_embeddings=4096,
            pad_token_id=32000,
        )
    raise KeyError(name)


def meta_numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    from transformers import AutoModelForCausalLM

    cfg = load_model_yaml(name)
    with torch.device("meta"):
        ours = build(cfg)
        reference = AutoModelForCausalLM.from_config(hf_reference_config(name))
        mtp = hf_mtp_parameters(reference, cfg.mtp_depth)
    assert meta_numel(reference) == PUBLISHED[name]
    assert count_parameters(cfg) == meta_numel(ours) == PUBLISHED[name] + mtp


def hf_mtp_parameters(main: torch.nn.Module, depth: int) -> int:
    """Parameters of transformers' multi-token-prediction modules for `main` (DeepSeek-V3 publishes one), without
    the embedding and head they share with it."""
    if not depth:
        return 0
    from transformers.modeling_layers import MtpModel

    mtp = MtpModel(main, depth)
    return sum(p.numel() for n, p in mtp.named_parameters() if not n.startswith(("embed_tokens", "shared_head")))


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
    "learned_gelu_biases_untied": dict(
        pos_embedding="learned",
        mlp_type="gelu",
        mlp_bias=True,
        qkv_bias=True,
        attn_out_bias=True,
        norm_type="layernorm",
        norm_bias=True,
    ),
    "head_dim_override_tied": dict(head_dim=48, tie_embeddings=True, attn_out_bias=True),
    "moe_shared_first_dense": dict(
        moe=MoEConfig(
            num_experts=4,
            top_k=2,
            num_shared_experts=1,
            expert_hidden_dim=40,
            shared_expert_hidden_dim=24,
            first_dense=1,
            every=2,
        ),
        n_layers=5,
    ),
    "moe_default_widths_mlp_bias": dict(moe=MoEConfig(num_experts=3, top_k=1), mlp_bias=True),
    "mla_full_rank_q_deepseek_moe": dict(
        mla=dict(kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12),
        qkv_bias=True,
        attn_out_bias=True,
        moe=MoEConfig(
            num_experts=4, top_k=2, num_shared_experts=2, first_dense=1, score_func="sigmoid", expert_bias=True
        ),
    ),
    "olmo2_full_qk_norm_branch_output": dict(
        norm_position="branch_output", qk_norm=True, qk_norm_scope="full", n_kv_heads=2
    ),
    "gemma_geglu_unit_offset_gated_shared": dict(
        mlp_type="geglu",
        rmsnorm_unit_offset=True,
        norm_position="sandwich",
        moe=MoEConfig(num_experts=4, top_k=1, num_shared_experts=1, shared_expert_gate=True, every=2),
    ),
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
            for layer in model.layers.values()
            if layer.moe is not None
        )
        assert count_parameters(cfg, active=True) == meta_numel(model) - inactive
    else:
        assert count_parameters(cfg, active=True) == meta_numel(model)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_model_yaml_formula_matches_our_model(name: str) -> None:
    cfg = load_model_yaml(name)
    with torch.device("meta"):
        assert count_parameters(cfg) == meta_numel(build(cfg))


@pytest.mark.parametrize("name", ["gemma2_9b", "gemma3_4b", "phi3_mini", "qwen3_30b_a3b", "deepseek_v3"])
def test_published_configs_match_transformers_layer_by_layer(name: str) -> None:
    """What the counts alone would not catch: which layers slide, which are MoE, how RoPE is set."""
    cfg, hf = load_model_yaml(name), hf_reference_config(name)
    if hasattr(hf, "layer_types") and cfg.sliding_window is not None:
        assert [cfg.layer_window(i) is None for i in range(cfg.n_layers)] == [
            t == "full_attention" for t in hf.layer_types
        ]
    if name == "gemma3_4b":
        assert cfg.local_rope_theta == hf.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
        assert cfg.rope_theta == hf.rope_parameters["full_attention"]["rope_theta"] == 1e6
    if name == "phi3_mini":
        s = cfg.rope_scaling
        assert len(s.long_factor) == len(s.short_factor) == 3072 // 32 // 2
        assert s.factor == hf.max_position_embeddings / hf.original_max_position_embeddings
    if name == "deepseek_v3":
        assert [cfg.is_moe_layer(i) for i in range(cfg.n_layers)] == [i >= 3 for i in range(61)]
        assert cfg.moe.expert_bias and cfg.moe.score_func == "sigmoid"
    if name == "qwen3_30b_a3b":
        assert all(cfg.is_moe_layer(i) for i in range(cfg.n_layers))
