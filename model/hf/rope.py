"""RoPE settings between Loom's ModelConfig (rope_theta + RopeScalingConfig) and transformers' `rope_parameters`
(5.x) / `rope_theta` + `rope_scaling` (4.x), formula for formula (model/blocks/rope.py computes what transformers'
rope init functions compute from these)."""

from __future__ import annotations

import math
from typing import Optional

from model.config import ModelConfig, RopeScalingConfig
from model.hf.common import HFConversionError


def rope_parameters(
    cfg: ModelConfig, *, theta: Optional[float] = None, scaling: Optional[RopeScalingConfig] = None
) -> dict:
    """transformers' rope_parameters for Loom's RoPE (or for `theta`/`scaling` given: Gemma 3's local layers)."""
    s = cfg.rope_scaling if scaling is None else scaling
    params: dict = {"rope_type": "default", "rope_theta": float(cfg.rope_theta if theta is None else theta)}
    if s.is_plain:
        return params
    if s.type == "ntk":
        raise HFConversionError("rope_scaling.type=ntk (static NTK) has no transformers equivalent: use dynamic")
    params.update(rope_type=s.type, factor=float(s.factor))
    if s.type == "llama3":
        params.update(
            low_freq_factor=float(s.low_freq_factor),
            high_freq_factor=float(s.high_freq_factor),
            original_max_position_embeddings=int(s.original_max_seq_len),
        )
    elif s.type == "yarn":
        params.update(
            original_max_position_embeddings=int(s.original_max_seq_len),
            beta_fast=float(s.beta_fast),
            beta_slow=float(s.beta_slow),
            attention_factor=s.cos_sin_factor,
        )
        if s.mscale_all_dim:
            params["mscale_all_dim"] = float(s.mscale_all_dim)
    elif s.type == "longrope":
        params.update(
            original_max_position_embeddings=int(s.original_max_seq_len),
            long_factor=[float(x) for x in s.long_factor],
            short_factor=[float(x) for x in s.short_factor],
            attention_factor=s.cos_sin_factor,
        )
    return params


def max_position_embeddings(cfg: ModelConfig) -> int:
    """transformers' dynamic NTK reads its original context from max_position_embeddings; Loom keeps it in
    rope_scaling.original_max_seq_len (max_seq_len being how far the model may go)."""
    s = cfg.rope_scaling
    return int(s.original_max_seq_len) if s.type == "dynamic" and not s.is_plain else cfg.max_seq_len


def rope_config_fields(cfg: ModelConfig) -> dict:
    """The RoPE keys of config.json, for 5.x readers (rope_parameters) and 4.x ones (rope_theta, rope_scaling)."""
    params = rope_parameters(cfg)
    return {
        "rope_parameters": params,
        "rope_theta": params["rope_theta"],
        "rope_scaling": None if params["rope_type"] == "default" else params,
    }


def merged_rope_parameters(hf: dict, default_theta: float, params: Optional[dict] = None) -> dict:
    """One rope_parameters dict from a config.json of either generation (legacy rope_scaling keys folded in)."""
    merged = dict(params if params is not None else (hf.get("rope_parameters") or {}))
    for key, value in (hf.get("rope_scaling") or {}).items():
        merged.setdefault(key, value)
    merged.setdefault("rope_theta", hf.get("rope_theta", default_theta))
    if "rope_type" not in merged:
        merged["rope_type"] = merged.get("type", "default")
    return merged


def rope_from_hf(
    hf: dict, params: dict, max_seq_len: int, *, keep_mscale_all_dim: bool = False
) -> tuple[float, RopeScalingConfig, int]:
    """(rope_theta, RopeScalingConfig, max_seq_len) computing what transformers computes from `params`.

    `keep_mscale_all_dim`: DeepSeek's attention multiplies its softmax scale by YaRN's mscale_all_dim correction;
    other families only fold it into the cos/sin factor."""
    theta = float(params.get("rope_theta", 10000.0))
    kind = params.get("rope_type", "default")
    if kind == "su":  # Phi-3's early name for LongRoPE
        kind = "longrope"
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise HFConversionError("partial_rotary_factor != 1 (partial RoPE) is not supported by Loom")
    if kind == "default":
        return theta, RopeScalingConfig(), max_seq_len
    factor = float(params["factor"]) if params.get("factor") is not None else None
    original = params.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    if kind == "linear":
        return theta, RopeScalingConfig(type="linear", factor=factor), max_seq_len
    if kind == "dynamic":
        # transformers scales beyond max_position_embeddings; Loom's tables stop at max_seq_len, so allow factor x.
        scaling = RopeScalingConfig(type="dynamic", factor=factor, original_max_seq_len=max_seq_len)
        return theta, scaling, int(max_seq_len * max(factor, 1.0))
    if kind == "llama3":
        return (
            theta,
            RopeScalingConfig(
                type="llama3",
                factor=factor,
                original_max_seq_len=int(original),
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
            ),
            max_seq_len,
        )
    if kind == "longrope":
        if factor is None:
            factor = max_seq_len / int(original)
        return (
            theta,
            RopeScalingConfig(
                type="longrope",
                factor=factor,
                original_max_seq_len=int(original),
                long_factor=[float(x) for x in params["long_factor"]],
                short_factor=[float(x) for x in params["short_factor"]],
                attention_factor=params.get("attention_factor"),
            ),
            max_seq_len,
        )
    if kind == "yarn":
        if factor is None:
            factor = max_seq_len / int(original)
        if params.get("truncate", True) is False:
            raise HFConversionError("rope_parameters.truncate=false (untruncated YaRN ramp) is not supported by Loom")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        attention_factor = params.get("attention_factor")
        if attention_factor is None:  # transformers' rule
            attention_factor = (
                get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
                if mscale and mscale_all_dim
                else get_mscale(factor)
            )
        return (
            theta,
            RopeScalingConfig(
                type="yarn",
                factor=factor,
                original_max_seq_len=int(original),
                beta_fast=float(params.get("beta_fast") or 32.0),
                beta_slow=float(params.get("beta_slow") or 1.0),
                attention_factor=float(attention_factor),
                mscale_all_dim=float(mscale_all_dim or 0.0) if keep_mscale_all_dim else 0.0,
            ),
            max_seq_len,
        )
    raise HFConversionError(
        f"rope type {kind!r} has no Loom equivalent (supported: default, linear, dynamic, llama3, yarn, longrope)"
    )
