"""ALiBi (Press et al., 2022): a per-head linear penalty on query-key distance instead of position embeddings."""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head slopes from the paper: a geometric sequence starting at 2^(-8/n); for n not a power of two, the
    slopes of the nearest lower power of two followed by every other slope of the next power of two."""

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two_slopes(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """Additive bias -slope * (q_pos - k_pos). q_pos [T] or [B, T], k_pos [S] or [B, S] -> [B or 1, H, T, S]."""
    if q_pos.dim() == 1:
        q_pos = q_pos.unsqueeze(0)
    if k_pos.dim() == 1:
        k_pos = k_pos.unsqueeze(0)
    distance = (q_pos[:, :, None] - k_pos[:, None, :]).to(torch.float32)  # [B, T, S]
    return -slopes.to(distance.device)[None, :, None, None] * distance[:, None]
