"""Rotary position embeddings (RoPE) and their long-context frequency scalings.

The inverse frequencies follow Hugging Face's rope init functions (`modeling_rope_utils`) formula for formula, so
a Llama 3.x / Mistral / YaRN checkpoint loaded into Loom sees the same rotations. The rotation itself is the
"rotate_half" form on the (first half, second half) split of each head, as in HF, not interleaved pairs.
"""
from __future__ import annotations

import math

import torch

from model.config import RopeScalingConfig


def _plain_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (theta**exponents)


def _yarn_inv_freq(head_dim: int, theta: float, s: RopeScalingConfig) -> torch.Tensor:
    def correction_dim(num_rotations: float) -> float:
        return (head_dim * math.log(s.original_max_seq_len / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(s.beta_fast)), 0)
    high = min(math.ceil(correction_dim(s.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp, as HF does
    ramp = torch.clamp((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, head_dim, 2).to(torch.float32) / head_dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (s.factor * pos_freqs)
    return interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight


def _llama3_inv_freq(head_dim: int, theta: float, s: RopeScalingConfig) -> torch.Tensor:
    inv_freq = _plain_inv_freq(head_dim, theta)
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScalingConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim // 2] (fp32) and the attention factor that multiplies cos and sin."""
    kind = scaling.type
    if kind == "none" or (scaling.factor == 1.0 and kind in ("linear", "ntk", "llama3")):
        return _plain_inv_freq(head_dim, theta), 1.0
    if kind == "linear":
        return _plain_inv_freq(head_dim, theta) / scaling.factor, 1.0
    if kind == "ntk":
        return _plain_inv_freq(head_dim, theta * scaling.factor ** (head_dim / (head_dim - 2))), 1.0
    if kind == "llama3":
        return _llama3_inv_freq(head_dim, theta, scaling), 1.0
    if kind == "yarn":
        factor = scaling.factor
        attention_factor = 0.1 * scaling.mscale * math.log(factor) + 1.0 if factor > 1 else 1.0
        return _yarn_inv_freq(head_dim, theta, scaling), attention_factor
    raise ValueError(f"model.rope_scaling.type={kind!r} is not one of none|linear|ntk|yarn|llama3")


def rope_cos_sin(
    head_dim: int, max_len: int, theta: float, scaling: RopeScalingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_len, head_dim] in fp32 for positions 0..max_len-1 (halves duplicated, HF layout)."""
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling)
    positions = torch.arange(max_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * attention_factor, emb.sin() * attention_factor


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, head_dim] by cos/sin gathered at its positions: [T, head_dim] or [B, T, head_dim]."""
    cos = cos.to(x.dtype).unsqueeze(-2)
    sin = sin.to(x.dtype).unsqueeze(-2)
    return x * cos + rotate_half(x) * sin
