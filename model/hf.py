"""Hugging Face interop: Loom checkpoints to and from `transformers` directories (config.json + safetensors).

A trained model is only useful once the ecosystem can load it, and published weights are the usual starting point,
so both directions go through the same table of name rules per architecture (Llama, Mistral, Mixtral, GPT-2).
The HF architecture is picked from our config: learned positions + LayerNorm + GELU -> gpt2; MoE -> mixtral;
sliding window -> mistral; otherwise llama. Anything HF's classes cannot compute identically (ALiBi, QK-norm,
softcaps, post/sandwich norms, shared experts, ...) is refused with the reason, never exported approximately.

The conversion is written here rather than taken from a library because it is a rename table over two specific
layouts: ours (`model/transformer.py`) and transformers' on-disk format. transformers 5.x fuses Mixtral experts in
memory (`experts.gate_up_proj` [E, 2*I, D], `experts.down_proj` [E, D, I]) but `save_pretrained` still writes the
per-expert layout (`block_sparse_moe.experts.<e>.w1/w2/w3.weight`) that the Hub holds and 4.x reads; export writes
that layout, import reads both. GPT-2 uses Conv1D (weights stored [in, out], transposed from nn.Linear) and a fused
`c_attn` = [q | k | v]. Our RoPE uses HF's rotate_half convention, so q/k weights map without permutation.

CLI:  python -m model.hf export <checkpoint_or_run_dir> <hf_dir> [--dtype bfloat16] [--overwrite]
      python -m model.hf import <hf_dir> <checkpoint_dir>
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import ModelConfig, MoEConfig, RopeScalingConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # transformers' default shard size
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFConversionError(ValueError):
    """A config or checkpoint cannot be represented on the other side; the message says why and what to change."""


# ------------------------------------------------------------------------------------------ architecture choice


def _moe(cfg: ModelConfig) -> Optional[MoEConfig]:
    if cfg.moe is None or isinstance(cfg.moe, MoEConfig):
        return cfg.moe
    return MoEConfig(**dict(cfg.moe))


def _rope(cfg: ModelConfig) -> RopeScalingConfig:
    s = cfg.rope_scaling
    return s if isinstance(s, RopeScalingConfig) else RopeScalingConfig(**dict(s))


def hf_model_type(cfg: ModelConfig) -> str:
    """The transformers `model_type` that computes exactly what our model computes, or HFConversionError."""
    problems = []
    if cfg.norm_position != "pre":
        problems.append(f"norm_position={cfg.norm_position!r} (HF decoders here are pre-norm)")
    if cfg.qk_norm:
        problems.append("qk_norm=true")
    if cfg.attn_logit_softcap is not None or cfg.final_logit_softcap is not None:
        problems.append("attention/final logit softcaps")
    if cfg.pos_embedding in ("alibi", "none"):
        problems.append(f"pos_embedding={cfg.pos_embedding!r}")
    gpt2_like = cfg.pos_embedding == "learned" or cfg.norm_type == "layernorm" or cfg.mlp_type == "gelu"
    if gpt2_like:
        model_type = "gpt2"
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
        if cfg.sliding_window is not None or cfg.moe is not None:
            problems.append("GPT-2 has no sliding window or MoE")
    else:
        moe = _moe(cfg)
        model_type = "mixtral" if moe is not None else "mistral" if cfg.sliding_window is not None else "llama"
        if cfg.dim % cfg.n_heads:
            problems.append(f"transformers requires dim ({cfg.dim}) divisible by n_heads ({cfg.n_heads})")
        if model_type == "llama" and cfg.qkv_bias != cfg.attn_out_bias:
            problems.append("Llama's attention_bias covers q/k/v and o together: set qkv_bias = attn_out_bias")
        if model_type != "llama" and (cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias):
            problems.append(f"{model_type} has no attention or MLP biases")
        if moe is not None:
            if moe.num_shared_experts or moe.every != 1 or moe.first_dense:
                problems.append("Mixtral has MoE in every layer and no shared experts (every=1, first_dense=0)")
            if not moe.norm_topk_prob:
                problems.append("Mixtral renormalises the top-k router probabilities: set moe.norm_topk_prob true")
        scaling = _rope(cfg)
        if scaling.type == "ntk":
            problems.append("rope_scaling.type=ntk (static NTK) has no transformers equivalent")
    if problems:
        raise HFConversionError(
            f"model config {cfg.name!r} cannot be exported to Hugging Face: " + "; ".join(problems)
        )
    return model_type


_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


def _rope_parameters(cfg: ModelConfig) -> dict:
    s = _rope(cfg)
    params: dict = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if s.type == "none" or (s.type in ("linear", "llama3") and s.factor == 1.0):
        return params
    params.update(rope_type=s.type, factor=float(s.factor))
    if s.type == "llama3":
        params.update(
            low_freq_factor=float(s.low_freq_factor),
            high_freq_factor=float(s.high_freq_factor),
            original_max_position_embeddings=int(s.original_max_seq_len),
        )
    elif s.type == "yarn":
        attention_factor = 0.1 * s.mscale * math.log(s.factor) + 1.0 if s.factor > 1 else 1.0
        params.update(
            original_max_position_embeddings=int(s.original_max_seq_len),
            beta_fast=float(s.beta_fast),
            beta_slow=float(s.beta_slow),
            attention_factor=attention_factor,
        )
    return params


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """config.json contents for `cfg` (fields for both transformers 5.x and 4.x readers)."""
    model_type = hf_model_type(cfg)
    dtype_name = str(dtype).removeprefix("torch.")
    common = {"architectures": [_ARCHITECTURES[model_type]], "model_type": model_type, "vocab_size": cfg.vocab_size,
              "bos_token_id": None, "eos_token_id": None, "tie_word_embeddings": bool(cfg.tie_embeddings),
              "initializer_range": cfg.init_std, "dtype": dtype_name, "torch_dtype": dtype_name, "use_cache": True}
    if model_type == "gpt2":
        return {**common, "n_embd": cfg.dim, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
                "n_positions": cfg.max_seq_len, "n_inner": cfg.ffn_hidden_dim, "activation_function": "gelu_new",
                "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    rope = _rope_parameters(cfg)
    out = {**common, "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_hidden_dim,
           "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
           "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.attn_head_dim, "hidden_act": "silu",
           "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "attention_dropout": 0.0,
           "rope_parameters": rope, "rope_theta": rope["rope_theta"],
           "rope_scaling": None if rope["rope_type"] == "default" else rope}
    if model_type == "llama":
        out.update(attention_bias=bool(cfg.qkv_bias), mlp_bias=bool(cfg.mlp_bias), pretraining_tp=1)
    else:
        out["sliding_window"] = cfg.sliding_window
    if model_type == "mixtral":
        moe = _moe(cfg)
        hidden = moe.expert_hidden_dim if moe.expert_hidden_dim is not None else cfg.ffn_hidden_dim
        out.update(intermediate_size=hidden, num_local_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                   router_aux_loss_coef=moe.aux_loss_weight, router_jitter_noise=0.0, output_router_logits=False)
    return out


# ------------------------------------------------------------------------------------------ config from HF


def _rope_scaling_from_hf(hf: dict, max_seq_len: int) -> tuple[float, RopeScalingConfig]:
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    for key, value in legacy.items():
        params.setdefault(key, value)
    default_theta = 1e6 if hf.get("model_type") == "mixtral" else 10000.0
    theta = float(params.get("rope_theta", hf.get("rope_theta", default_theta)))
    kind = params.get("rope_type", params.get("type", "default"))
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise HFConversionError("partial_rotary_factor != 1 (partial RoPE) is not supported by Loom")
    if kind == "default":
        return theta, RopeScalingConfig()
    factor = float(params["factor"]) if params.get("factor") is not None else None
    original = params.get("original_max_position_embeddings")
    if kind == "linear":
        return theta, RopeScalingConfig(type="linear", factor=factor)
    if kind == "llama3":
        return theta, RopeScalingConfig(
            type="llama3", factor=factor, original_max_seq_len=int(original),
            low_freq_factor=float(params["low_freq_factor"]), high_freq_factor=float(params["high_freq_factor"]),
        )
    if kind == "yarn":
        if factor is None:
            factor = max_seq_len / int(original)
        if params.get("truncate", True) is False:
            raise HFConversionError("rope_parameters.truncate=false (untruncated YaRN ramp) is not supported by Loom")
        attention_factor = params.get("attention_factor")
        if attention_factor is None:  # transformers' rule
            def get_mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

            mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
            attention_factor = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
                                if mscale and mscale_all_dim else get_mscale(factor))
        loom_mscale = (attention_factor - 1.0) / (0.1 * math.log(factor)) if factor > 1 else 1.0
        return theta, RopeScalingConfig(
            type="yarn", factor=factor, original_max_seq_len=int(original),
            beta_fast=float(params.get("beta_fast", 32.0)), beta_slow=float(params.get("beta_slow", 1.0)),
            mscale=loom_mscale,
        )
    raise HFConversionError(f"rope type {kind!r} has no Loom equivalent (supported: default, linear, llama3, yarn)")


def model_config_from_hf(hf: dict, *, name: str = "hf_import") -> ModelConfig:
    """ModelConfig computing what the HF architecture in `hf` (a config.json dict) computes."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
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
            name=name, vocab_size=hf.get("vocab_size", 50257), dim=dim, n_layers=hf.get("n_layer", 12),
            n_heads=hf.get("n_head", 12), max_seq_len=hf.get("n_positions", 1024), norm_type="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_bias=True, pos_embedding="learned", qkv_bias=True,
            attn_out_bias=True, mlp_type="gelu", hidden_dim=hf.get("n_inner") or 4 * dim, mlp_bias=True,
            tie_embeddings=True, init_std=hf.get("initializer_range", 0.02),
        )
    if model_type not in ("llama", "mistral", "mixtral"):
        raise HFConversionError(
            f"model_type={model_type!r} is not supported (supported: llama, mistral, mixtral, gpt2)"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise HFConversionError(f"hidden_act={hf.get('hidden_act')!r}: Loom's SwiGLU uses silu")
    if hf.get("layer_types") and len(set(hf["layer_types"])) > 1:
        raise HFConversionError("per-layer attention types (layer_types) are not supported")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    max_seq_len = hf.get("max_position_embeddings", 2048)
    rope_theta, rope_scaling = _rope_scaling_from_hf(hf, max_seq_len)
    attention_bias = bool(hf.get("attention_bias", False))
    sliding_window = None
    if model_type == "mistral":
        sliding_window = hf.get("sliding_window", 4096)  # MistralConfig's default when the key is absent
    elif model_type == "mixtral":
        sliding_window = hf.get("sliding_window")
    moe = None
    if model_type == "mixtral":
        moe = MoEConfig(
            num_experts=hf.get("num_local_experts", 8), top_k=hf.get("num_experts_per_tok", 2),
            expert_hidden_dim=hf["intermediate_size"], aux_loss_weight=hf.get("router_aux_loss_coef", 0.001),
            router_z_loss_weight=0.0, norm_topk_prob=True,
        )
    default_eps = 1e-5 if model_type == "mixtral" else 1e-6
    return ModelConfig(
        name=name, vocab_size=hf["vocab_size"], dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=hf.get("head_dim") or dim // n_heads,
        max_seq_len=max_seq_len, norm_type="rmsnorm", norm_eps=hf.get("rms_norm_eps", default_eps),
        pos_embedding="rope", rope_theta=rope_theta, rope_scaling=rope_scaling, qkv_bias=attention_bias,
        attn_out_bias=attention_bias, sliding_window=sliding_window, mlp_type="swiglu",
        hidden_dim=hf["intermediate_size"], mlp_bias=bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), moe=moe,
        init_std=hf.get("initializer_range", 0.02),
    )


# ------------------------------------------------------------------------------------------ weight name rules


@dataclass
class Rule:
    """HF tensors `hf` <-> Loom tensors `loom`, with the conversion each way (lists in the keys' order)."""

    hf: tuple[str, ...]
    loom: tuple[str, ...]
    to_hf: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda ts: ts
    to_loom: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda ts: ts


def _same(hf: str, loom: str) -> Rule:
    return Rule((hf,), (loom,))


def _transposed(hf: str, loom: str) -> Rule:
    """GPT-2 Conv1D stores [in, out]; nn.Linear stores [out, in]."""
    return Rule((hf,), (loom,), lambda ts: [ts[0].t()], lambda ts: [ts[0].t()])


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    dim = cfg.dim
    rules = [
        _same("transformer.wte.weight", "tok_embeddings.weight"),
        _same("transformer.wpe.weight", "pos_embeddings.weight"),
        _same("transformer.ln_f.weight", "norm.weight"),
        _same("transformer.ln_f.bias", "norm.bias"),
    ]
    for i in range(cfg.n_layers):
        h, l = f"transformer.h.{i}.", f"layers.{i}."
        qkv = tuple(f"{l}attention.{w}" for w in ("wq", "wk", "wv"))
        rules += [
            _same(f"{h}ln_1.weight", f"{l}attention_norm.weight"),
            _same(f"{h}ln_1.bias", f"{l}attention_norm.bias"),
            _same(f"{h}ln_2.weight", f"{l}ffn_norm.weight"),
            _same(f"{h}ln_2.bias", f"{l}ffn_norm.bias"),
            Rule((f"{h}attn.c_attn.weight",), tuple(f"{k}.weight" for k in qkv),
                 lambda ts: [torch.cat(ts, dim=0).t()], lambda ts: list(ts[0].t().split(dim, dim=0))),
            Rule((f"{h}attn.c_attn.bias",), tuple(f"{k}.bias" for k in qkv),
                 lambda ts: [torch.cat(ts, dim=0)], lambda ts: list(ts[0].split(dim, dim=0))),
            _transposed(f"{h}attn.c_proj.weight", f"{l}attention.wo.weight"),
            _same(f"{h}attn.c_proj.bias", f"{l}attention.wo.bias"),
            _transposed(f"{h}mlp.c_fc.weight", f"{l}feed_forward.w1.weight"),
            _same(f"{h}mlp.c_fc.bias", f"{l}feed_forward.w1.bias"),
            _transposed(f"{h}mlp.c_proj.weight", f"{l}feed_forward.w2.weight"),
            _same(f"{h}mlp.c_proj.bias", f"{l}feed_forward.w2.bias"),
        ]
    return rules


def _decoder_rules(cfg: ModelConfig, *, fused_experts: bool = False) -> list[Rule]:
    """Llama / Mistral / Mixtral names. `fused_experts`: transformers 5.x in-memory Mixtral expert layout."""
    rules = [_same("model.embed_tokens.weight", "tok_embeddings.weight"), _same("model.norm.weight", "norm.weight")]
    if not cfg.tie_embeddings:
        rules.append(_same("lm_head.weight", "output.weight"))
    moe = _moe(cfg)
    for i in range(cfg.n_layers):
        h, l = f"model.layers.{i}.", f"layers.{i}."
        rules += [
            _same(f"{h}input_layernorm.weight", f"{l}attention_norm.weight"),
            _same(f"{h}post_attention_layernorm.weight", f"{l}ffn_norm.weight"),
        ]
        for hf_name, ours, has_bias in (("q_proj", "wq", cfg.qkv_bias), ("k_proj", "wk", cfg.qkv_bias),
                                        ("v_proj", "wv", cfg.qkv_bias), ("o_proj", "wo", cfg.attn_out_bias)):
            rules.append(_same(f"{h}self_attn.{hf_name}.weight", f"{l}attention.{ours}.weight"))
            if has_bias:
                rules.append(_same(f"{h}self_attn.{hf_name}.bias", f"{l}attention.{ours}.bias"))
        if moe is None:
            for hf_name, ours in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                rules.append(_same(f"{h}mlp.{hf_name}.weight", f"{l}feed_forward.{ours}.weight"))
                if cfg.mlp_bias:
                    rules.append(_same(f"{h}mlp.{hf_name}.bias", f"{l}feed_forward.{ours}.bias"))
        elif fused_experts:
            rules += [
                _same(f"{h}mlp.gate.weight", f"{l}moe.router.weight"),
                Rule((f"{h}mlp.experts.gate_up_proj",), (f"{l}moe.experts.w1", f"{l}moe.experts.w3"),
                     lambda ts: [torch.cat(ts, dim=1)], lambda ts: list(ts[0].chunk(2, dim=1))),
                _same(f"{h}mlp.experts.down_proj", f"{l}moe.experts.w2"),
            ]
        else:
            rules.append(_same(f"{h}block_sparse_moe.gate.weight", f"{l}moe.router.weight"))
            for w in ("w1", "w2", "w3"):
                per_expert = tuple(f"{h}block_sparse_moe.experts.{e}.{w}.weight" for e in range(moe.num_experts))
                rules.append(Rule(per_expert, (f"{l}moe.experts.{w}",),
                                  lambda ts: [t.clone() for t in ts[0].unbind(0)], lambda ts: [torch.stack(ts)]))
    return rules


def weight_rules(cfg: ModelConfig, model_type: str, *, fused_experts: bool = False) -> list[Rule]:
    return _gpt2_rules(cfg) if model_type == "gpt2" else _decoder_rules(cfg, fused_experts=fused_experts)


def _apply(rules: list[Rule], source: dict[str, torch.Tensor], *, to_hf: bool, where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    missing = []
    for rule in rules:
        src_keys, dst_keys = (rule.loom, rule.hf) if to_hf else (rule.hf, rule.loom)
        absent = [k for k in src_keys if k not in source]
        if absent:
            missing += absent
            continue
        converted = (rule.to_hf if to_hf else rule.to_loom)([source[k] for k in src_keys])
        out.update({k: t.contiguous() for k, t in zip(dst_keys, converted)})
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise HFConversionError(f"{where}: missing tensors {shown}")
    return out


def loom_to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    model_type = hf_model_type(cfg)
    rules = weight_rules(cfg, model_type)
    used = {k for rule in rules for k in rule.loom}
    tied_output = {"output.weight"} if cfg.tie_embeddings else set()
    unexpected = sorted(set(state) - used - tied_output)
    if unexpected:
        raise HFConversionError(f"Loom state dict has tensors with no {model_type} equivalent: {unexpected[:8]}")
    return _apply(rules, state, to_hf=True, where="Loom checkpoint")


def hf_to_loom_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, model_type: str) -> dict[str, torch.Tensor]:
    hf_state = dict(hf_state)
    if model_type == "gpt2":
        # The original OpenAI-converted files have no "transformer." prefix and carry causal-mask buffers.
        hf_state = {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v
                    for k, v in hf_state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight", None)
    fused = any(k.endswith("mlp.experts.gate_up_proj") for k in hf_state)
    rules = weight_rules(cfg, model_type, fused_experts=fused)
    used = {k for rule in rules for k in rule.hf}
    unexpected = sorted(set(hf_state) - used)
    if unexpected:
        raise HFConversionError(f"HF checkpoint has tensors Loom's {model_type} mapping does not know: {unexpected[:8]}")
    state = _apply(rules, hf_state, to_hf=False, where="HF checkpoint")
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state


# ------------------------------------------------------------------------------------------ files


def _replace_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    stale = None
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final}: already exists; pass --overwrite (overwrite=True) or pick another path")
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
        os.replace(final, stale)
    os.replace(tmp, final)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def write_hf_dir(
    hf_state: dict[str, torch.Tensor], config: dict, hf_dir: str | os.PathLike, *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
) -> Path:
    """config.json + safetensors (sharded with an index above `max_shard_bytes`), written into a temporary sibling
    directory and renamed into place so a reader never sees a half-written model."""
    final = Path(hf_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists; pass --overwrite (overwrite=True) or pick another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for key, tensor in hf_state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = tensor
            size += nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({key: name for key in shard})
            total = sum(t.numel() * t.element_size() for t in hf_state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        _replace_dir(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConversionError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HFConversionError(f"{path}: not valid JSON ({exc})") from exc


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    hf_dir = Path(hf_dir)
    if (hf_dir / SAFETENSORS_INDEX).is_file():
        weight_map = json.loads((hf_dir / SAFETENSORS_INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (hf_dir / SAFETENSORS_FILE).is_file():
        files = [SAFETENSORS_FILE]
    else:
        raise HFConversionError(
            f"{hf_dir}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}; only safetensors weights are read "
            "(re-save a pytorch_model.bin model with transformers' save_pretrained first)"
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(hf_dir / name), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state


def _check_against_model(state: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> None:
    """Names and shapes must be exactly those of `model.build(cfg)` (built on the meta device: no memory)."""
    from model import build

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
    problems += [f"{k}: shape {got[k]} != {expected[k]}" for k in sorted(set(got) & set(expected))
                 if got[k] != expected[k]]
    if problems:
        raise HFConversionError(f"{where} does not match the Loom model of its config: " + "; ".join(problems[:8]))


def export_checkpoint(
    checkpoint: str | os.PathLike, hf_dir: str | os.PathLike, *, dtype: Optional[str] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, overwrite: bool = False,
) -> Path:
    """Loom checkpoint (or run dir: its newest complete checkpoint) -> HF directory loadable by
    `AutoModelForCausalLM.from_pretrained`. `dtype`: float32 | bfloat16 | float16 (default: as stored)."""
    from model.checkpoint_io import load_model_checkpoint

    state, cfg = load_model_checkpoint(checkpoint)
    _check_against_model(state, cfg, f"checkpoint {checkpoint}")
    hf_state = loom_to_hf_state(state, cfg)
    if dtype is not None:
        if dtype not in _DTYPES:
            raise HFConversionError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}")
        hf_state = {k: v.to(_DTYPES[dtype]) for k, v in hf_state.items()}
    out_dtype = next(iter(hf_state.values())).dtype
    return write_hf_dir(hf_state, hf_config_dict(cfg, out_dtype), hf_dir,
                        max_shard_bytes=max_shard_bytes, overwrite=overwrite)


def import_checkpoint(hf_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, *, name: Optional[str] = None) -> Path:
    """HF directory -> Loom model-only checkpoint (DCP {"model": ...} + model_config.json + COMPLETE)."""
    from model.checkpoint_io import save_model_checkpoint

    hf_config = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf_config, name=name or Path(hf_dir).resolve().name)
    state = hf_to_loom_state(read_hf_weights(hf_dir), cfg, hf_config["model_type"])
    _check_against_model(state, cfg, f"{hf_dir}")
    return save_model_checkpoint(state, cfg, checkpoint_dir)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.hf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="Loom checkpoint or run dir -> Hugging Face directory")
    exp.add_argument("checkpoint", help="a step_<N> checkpoint directory or a run directory (newest complete)")
    exp.add_argument("hf_dir")
    exp.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="cast weights (default: as stored)")
    exp.add_argument("--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 1000**3)
    exp.add_argument("--overwrite", action="store_true", help="replace an existing hf_dir")
    imp = sub.add_parser("import", help="Hugging Face directory -> Loom model-only checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("checkpoint_dir", help="e.g. runs/base/checkpoints/step_00000000")
    imp.add_argument("--name", default=None, help="model config name (default: the HF directory's name)")
    args = parser.parse_args(argv)
    from model.checkpoint_io import CheckpointError

    try:
        if args.command == "export":
            out = export_checkpoint(args.checkpoint, args.hf_dir, dtype=args.dtype,
                                    max_shard_bytes=int(args.max_shard_gb * 1000**3), overwrite=args.overwrite)
        else:
            out = import_checkpoint(args.hf_dir, args.checkpoint_dir, name=args.name)
    except (HFConversionError, FileExistsError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
