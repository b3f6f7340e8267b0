"""Tiny random models of every family, built from transformers' own config classes (nothing downloaded).

Sliding windows (8) are shorter than the test sequences (40 tokens), RoPE scalings have an original context
(16) shorter than them, MoE routers have groups and scaling factors, so every feature changes the logits."""

from __future__ import annotations

import torch

VOCAB = 101
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=128,
    eos_token_id=None,
    bos_token_id=None,
    pad_token_id=None,
)
LONGROPE = dict(
    rope_type="longrope",
    rope_theta=10000.0,
    original_max_position_embeddings=16,
    long_factor=[1.0 + 0.37 * i for i in range(8)],
    short_factor=[1.0 + 0.05 * i for i in range(8)],
)


def hf_configs() -> dict:
    """model_type -> transformers config of a tiny model with every feature of the family on."""
    import transformers as tf

    return {
        "qwen2": tf.Qwen2Config(
            **COMMON,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            use_sliding_window=True,
            sliding_window=8,
            max_window_layers=0,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        ),
        "qwen3": tf.Qwen3Config(
            **COMMON,
            num_key_value_heads=2,
            head_dim=24,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "original_max_position_embeddings": 16,
            },
        ),
        "qwen2_moe": tf.Qwen2MoeConfig(
            **COMMON,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            norm_topk_prob=False,
            mlp_only_layers=[0],
        ),
        "qwen3_moe": tf.Qwen3MoeConfig(
            **{**COMMON, "num_hidden_layers": 4},
            num_key_value_heads=2,
            head_dim=16,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            norm_topk_prob=True,
            decoder_sparse_step=2,
        ),
        "deepseek_v2": tf.DeepseekV2Config(
            **{**COMMON, "num_hidden_layers": 3},
            num_key_value_heads=4,
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=2,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=12,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=1.5,
        ),
        "deepseek_v3": tf.DeepseekV3Config(
            **COMMON,
            num_key_value_heads=4,
            n_routed_experts=8,
            num_experts_per_tok=3,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            kv_lora_rank=16,
            q_lora_rank=24,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=12,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "original_max_position_embeddings": 16,
                "mscale": 0.9,
                "mscale_all_dim": 0.8,
                "beta_fast": 32,
                "beta_slow": 1,
            },
        ),
        "gemma2": tf.Gemma2Config(
            **COMMON,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=20.0,
            final_logit_softcapping=15.0,
        ),
        "gemma3_text": tf.Gemma3TextConfig(
            **COMMON,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            query_pre_attn_scalar=24,
            sliding_window_pattern=2,
            final_logit_softcapping=15.0,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        ),
        "olmo2": tf.Olmo2Config(**COMMON, num_key_value_heads=2),
        "phi3": tf.Phi3Config(
            **COMMON,
            num_key_value_heads=2,
            original_max_position_embeddings=16,
            sliding_window=8,
            rope_parameters=LONGROPE,
        ),
        "ernie4_5_moe": tf.Ernie4_5_MoeConfig(
            **COMMON,
            num_key_value_heads=2,
            moe_num_experts=4,
            moe_k=2,
            moe_intermediate_size=32,
            moe_num_shared_experts=1,
            moe_layer_start_index=1,
            tie_word_embeddings=False,
        ),
    }


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights, norms, biases and selection biases, so a swapped or missing tensor cannot hide; the output
    head scaled up so greedy choices are far from ties."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.08)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.05)
        head = model.get_output_embeddings().weight
        head.mul_(4.0)
    return model.eval()


def randomised_loom_model(cfg, seed: int) -> torch.nn.Module:
    """A Loom model of `cfg` (built after seeding) with every weight and selection bias moved off its
    initialisation, so a tensor exported to the wrong place cannot hide."""
    from model import build

    torch.manual_seed(seed)
    model = build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.08)
        for key, b in model.named_buffers():
            if key.endswith("expert_bias"):
                b.copy_(torch.randn_like(b) * 0.05)
    return model
