"""Static, preallocated key/value cache for one attention layer.

Preallocated rather than grown by concatenation so decoding does no reallocation and the shapes stay fixed
(friendly to CUDA graphs / torch.compile); new keys are written in place at the next free slots.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *, dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # slots filled so far

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Write k/v [B, H_kv, T, D] at the next T slots; return all keys/values so far and the write start."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated (raise max_len)")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], start

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Keep rows `batch_index` (beam search: each surviving beam takes its parent's cache)."""
        self.k.copy_(self.k.index_select(0, batch_index))
        self.v.copy_(self.v.index_select(0, batch_index))
