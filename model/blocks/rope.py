"""Rotary position embeddings (RoPE) and their long-context frequency scalings.

The inverse frequencies follow Hugging Face's rope init functions (`modeling_rope_utils`) formula for formula, so
a Llama 3.x / Mistral / YaRN / Phi-3 checkpoint loaded into Loom sees the same rotations. The rotation itself is
the "rotate_half" form on the (first half, second half) split of each head, as in HF, not interleaved pairs
(checkpoints stored for interleaved pairs, DeepSeek's, are permuted once at conversion: model/hf).

Two scalings depend on the length of the forward: dynamic NTK (the base grows with the largest position) and
LongRoPE (short or long factors either side of the original context). `RotaryEmbedding` picks or computes their
frequencies from the positions of each forward with tensor ops only, so the step never waits for the host.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import RopeScalingConfig


def _exponents(dim: int, device=None) -> torch.Tensor:
    return torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(torch.float32) / dim


def _plain_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** _exponents(head_dim))


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


def _longrope_inv_freq(head_dim: int, theta: float, factors: list[float]) -> torch.Tensor:
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * theta ** _exponents(head_dim))


def dynamic_ntk_inv_freq(head_dim: int, theta: float, s: RopeScalingConfig, seq_len: torch.Tensor) -> torch.Tensor:
    """Dynamic NTK frequencies for a forward whose largest position is seq_len - 1 (a 0-dim tensor, no host
    sync): plain RoPE up to the original context, then a base that grows with the length."""
    seq_len = torch.clamp(seq_len, min=s.original_max_seq_len)
    base = theta * ((s.factor * seq_len / s.original_max_seq_len) - (s.factor - 1)) ** (head_dim / (head_dim - 2))
    return 1.0 / (base.float() ** _exponents(head_dim, seq_len.device))


def rope_inv_freq(
    head_dim: int, theta: float, scaling: RopeScalingConfig, *, long: bool = False
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim // 2] (fp32) and the factor that multiplies cos and sin.

    Dynamic NTK gives its frequencies within the original context here (plain RoPE; longer forwards go through
    `dynamic_ntk_inv_freq`); LongRoPE its short ones, or the long ones with `long=True`."""
    kind = scaling.type
    if scaling.is_plain:
        return _plain_inv_freq(head_dim, theta), 1.0
    if kind == "linear":
        return _plain_inv_freq(head_dim, theta) / scaling.factor, 1.0
    if kind == "ntk":
        return _plain_inv_freq(head_dim, theta * scaling.factor ** (head_dim / (head_dim - 2))), 1.0
    if kind == "dynamic":
        return _plain_inv_freq(head_dim, theta), 1.0
    if kind == "llama3":
        return _llama3_inv_freq(head_dim, theta, scaling), 1.0
    if kind == "yarn":
        return _yarn_inv_freq(head_dim, theta, scaling), scaling.cos_sin_factor
    if kind == "longrope":
        factors = scaling.long_factor if long else scaling.short_factor
        return _longrope_inv_freq(head_dim, theta, factors), scaling.cos_sin_factor
    raise ValueError(f"model.rope_scaling.type={kind!r} is not a RoPE scaling Loom knows")


def _table(inv_freq: torch.Tensor, positions: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * factor, emb.sin() * factor


def rope_cos_sin(
    head_dim: int, max_len: int, theta: float, scaling: RopeScalingConfig, *, long: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [max_len, head_dim] in fp32 for positions 0..max_len-1 (halves duplicated, HF layout)."""
    inv_freq, attention_factor = rope_inv_freq(head_dim, theta, scaling, long=long)
    return _table(inv_freq, torch.arange(max_len, dtype=torch.float32), attention_factor)


class RotaryEmbedding(nn.Module):
    """cos/sin of one RoPE (rotary width, base, scaling) at the positions of a forward.

    Static scalings read a precomputed table; LongRoPE holds a short and a long table and takes the long one for a
    forward whose largest position reaches the original context (as transformers does, for every position of that
    forward); dynamic NTK computes the frequencies of a forward that long. The tables are non-persistent buffers,
    recomputed by `reset_buffers()` after materialising from the meta device."""

    def __init__(self, dim: int, max_len: int, theta: float, scaling: RopeScalingConfig) -> None:
        super().__init__()
        self.dim, self.max_len, self.theta, self.scaling = dim, max_len, theta, scaling
        self.register_buffer("cos", None, persistent=False)
        self.register_buffer("sin", None, persistent=False)
        self.register_buffer("cos_long", None, persistent=False)
        self.register_buffer("sin_long", None, persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the tables, on the device the buffers already live on (created on the default device)."""
        device = self.cos.device if self.cos is not None else None
        if device is not None and device.type == "meta":
            return  # nothing to compute on the meta device (to_empty + init_weights comes back here)
        tables = {"cos": None, "sin": None, "cos_long": None, "sin_long": None}
        tables["cos"], tables["sin"] = rope_cos_sin(self.dim, self.max_len, self.theta, self.scaling)
        if self.scaling.type == "longrope" and not self.scaling.is_plain:
            tables["cos_long"], tables["sin_long"] = rope_cos_sin(
                self.dim, self.max_len, self.theta, self.scaling, long=True
            )
        for name, table in tables.items():
            setattr(self, name, table.to(device) if table is not None and device is not None else table)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T] or [B, T] -> cos, sin [T, dim] or [B, T, dim] (fp32)."""
        s = self.scaling
        if not s.depends_on_length:
            return self.cos[positions], self.sin[positions]
        long = positions.max() + 1 > s.original_max_seq_len  # a 0-dim tensor: no host sync
        if s.type == "longrope":
            return (
                torch.where(long, self.cos_long[positions], self.cos[positions]),
                torch.where(long, self.sin_long[positions], self.sin[positions]),
            )
        inv_freq = dynamic_ntk_inv_freq(self.dim, self.theta, s, positions.max() + 1)
        return _table(inv_freq, positions, 1.0)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, T, H, head_dim] by cos/sin gathered at its positions: [T, head_dim] or [B, T, head_dim]."""
    cos = cos.to(x.dtype).unsqueeze(-2)
    sin = sin.to(x.dtype).unsqueeze(-2)
    return x * cos + rotate_half(x) * sin
