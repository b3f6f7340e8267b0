"""GPT-2: learned positions, LayerNorm with biases, tanh-GELU MLP, biases everywhere, tied output."""

from __future__ import annotations

import torch

from model.config import ModelConfig
from model.hf.common import HFConversionError, Rule, same, transposed
from model.hf.family import Family, OwnLayout
from model.hf.family_kit import require


def _problems(cfg: ModelConfig) -> list[str]:
    problems = []
    if not (cfg.pos_embedding == "learned" and cfg.norm_type == "layernorm" and cfg.mlp_type == "gelu"):
        problems.append(
            "GPT-2 export needs pos_embedding=learned, norm_type=layernorm and mlp_type=gelu together "
            f"(got {cfg.pos_embedding}, {cfg.norm_type}, {cfg.mlp_type})"
        )
    if not (cfg.norm_bias and cfg.qkv_bias and cfg.attn_out_bias and cfg.mlp_bias):
        problems.append("GPT-2 has biases everywhere: set norm_bias, qkv_bias, attn_out_bias, mlp_bias true")
    if cfg.kv_heads != cfg.n_heads or cfg.attn_head_dim * cfg.n_heads != cfg.dim:
        problems.append("GPT-2 needs plain multi-head attention (n_kv_heads = n_heads, head_dim = dim/n_heads)")
    if not cfg.tie_embeddings:
        problems.append("GPT-2 ties the output to the token embeddings: set tie_embeddings true")
    return problems + require(
        cfg,
        "gpt2",
        norm_position="pre",
        qk_norm=False,
        attn_logit_softcap=None,
        final_logit_softcap=None,
        sliding_window=None,
        moe=None,
        mla=None,
        scale_embeddings=False,
        query_pre_attn_scalar=None,
    )


def _to_hf(cfg: ModelConfig) -> dict:
    return {
        "architectures": [FAMILY.architecture],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": True,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "n_embd": cfg.dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_positions": cfg.max_seq_len,
        "n_inner": cfg.ffn_hidden_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
    }


def _from_hf(hf: dict, name: str) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise HFConversionError(f"GPT-2 activation_function={act!r}: Loom's GELU is the tanh approximation")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise HFConversionError("GPT-2 scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are unsupported")
    if hf.get("scale_attn_weights", True) is False:
        raise HFConversionError("GPT-2 scale_attn_weights=false (unscaled attention) is unsupported")
    if hf.get("tie_word_embeddings", True) is False:
        raise HFConversionError("untied GPT-2 is unsupported")
    dim = hf.get("n_embd", 768)
    return ModelConfig(
        name=name,
        vocab_size=hf.get("vocab_size", 50257),
        dim=dim,
        n_layers=hf.get("n_layer", 12),
        n_heads=hf.get("n_head", 12),
        max_seq_len=hf.get("n_positions", 1024),
        norm_type="layernorm",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        norm_bias=True,
        pos_embedding="learned",
        qkv_bias=True,
        attn_out_bias=True,
        mlp_type="gelu",
        hidden_dim=hf.get("n_inner") or 4 * dim,
        mlp_bias=True,
        tie_embeddings=True,
        init_std=hf.get("initializer_range", 0.02),
        hf_model_type="gpt2",
    )


def _rules(cfg: ModelConfig) -> list[Rule]:
    """GPT-2's tensors: no "model." prefix, q/k/v fused in c_attn, Conv1D weights stored [in, out]."""
    dim = cfg.dim
    rules = [
        same("transformer.wte.weight", "tok_embeddings.weight"),
        same("transformer.wpe.weight", "pos_embeddings.weight"),
        same("transformer.ln_f.weight", "norm.weight"),
        same("transformer.ln_f.bias", "norm.bias"),
    ]
    for i in range(cfg.n_layers):
        h, loom = f"transformer.h.{i}.", f"layers.{i}."
        qkv = tuple(f"{loom}attention.{w}" for w in ("wq", "wk", "wv"))
        rules += [
            same(f"{h}ln_1.weight", f"{loom}attention_norm.weight"),
            same(f"{h}ln_1.bias", f"{loom}attention_norm.bias"),
            same(f"{h}ln_2.weight", f"{loom}ffn_norm.weight"),
            same(f"{h}ln_2.bias", f"{loom}ffn_norm.bias"),
            Rule(
                (f"{h}attn.c_attn.weight",),
                tuple(f"{k}.weight" for k in qkv),
                lambda ts: [torch.cat(ts, dim=0).t()],
                lambda ts: list(ts[0].t().split(dim, dim=0)),
            ),
            Rule(
                (f"{h}attn.c_attn.bias",),
                tuple(f"{k}.bias" for k in qkv),
                lambda ts: [torch.cat(ts, dim=0)],
                lambda ts: list(ts[0].split(dim, dim=0)),
            ),
            transposed(f"{h}attn.c_proj.weight", f"{loom}attention.wo.weight"),
            same(f"{h}attn.c_proj.bias", f"{loom}attention.wo.bias"),
            transposed(f"{h}mlp.c_fc.weight", f"{loom}feed_forward.w1.weight"),
            same(f"{h}mlp.c_fc.bias", f"{loom}feed_forward.w1.bias"),
            transposed(f"{h}mlp.c_proj.weight", f"{loom}feed_forward.w2.weight"),
            same(f"{h}mlp.c_proj.bias", f"{loom}feed_forward.w2.bias"),
        ]
    return rules


def _normalise(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original OpenAI-converted files have no "transformer." prefix and carry causal-mask buffers."""
    return {
        (k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v
        for k, v in state.items()
        if not k.endswith((".attn.bias", ".attn.masked_bias"))
    }


FAMILY = Family(
    "gpt2",
    "GPT2LMHeadModel",
    _problems,
    _to_hf,
    _from_hf,
    # Any one of GPT-2's switches: no RoPE decoder family has learned positions, LayerNorm or a plain GELU MLP.
    matches=lambda cfg: cfg.pos_embedding == "learned" or cfg.norm_type == "layernorm" or cfg.mlp_type == "gelu",
    priority=140,  # tried first
    layout=OwnLayout(_rules, _normalise),
)
