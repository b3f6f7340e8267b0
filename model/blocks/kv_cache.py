"""Static, preallocated key/value caches for one attention layer.

Preallocated rather than grown by concatenation so decoding does no reallocation and the shapes stay fixed
(friendly to CUDA graphs / torch.compile); new entries are written in place at the next free slots. `KVCache`
holds per-head keys and values (MHA/GQA/MQA); `LatentKVCache` holds what multi-head latent attention needs to
rebuild them: the compressed latent and the shared rotary key part, kv_lora_rank + rope_dim numbers per token
instead of 2 * n_heads * head_dim.
"""

from __future__ import annotations

import torch


class _SlotCache:
    """Tensors [B, ..., max_len, ...] written slot by slot along `seq_dim`."""

    seq_dim: int
    names: tuple[str, ...]

    def __init__(self) -> None:
        self.length = 0  # slots filled so far

    @property
    def max_len(self) -> int:
        return getattr(self, self.names[0]).shape[self.seq_dim]

    def _write(self, *values: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        start, end = self.length, self.length + values[0].shape[self.seq_dim]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} slots needed, {self.max_len} allocated (raise max_len)")
        out = []
        for name, value in zip(self.names, values):
            store = getattr(self, name)
            store.narrow(self.seq_dim, start, end - start).copy_(value)
            out.append(store.narrow(self.seq_dim, 0, end))
        self.length = end
        return out, start

    def reorder(self, batch_index: torch.Tensor) -> None:
        """Keep rows `batch_index` (beam search: each surviving beam takes its parent's cache)."""
        for name in self.names:
            store = getattr(self, name)
            store.copy_(store.index_select(0, batch_index))

    @property
    def elements_per_token(self) -> int:
        """Numbers stored per cached token of one sequence (all heads)."""
        return sum(getattr(self, n)[0].numel() for n in self.names) // self.max_len


class KVCache(_SlotCache):
    seq_dim, names = 2, ("k", "v")

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        v_head_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.k = torch.zeros(batch_size, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch_size, n_kv_heads, max_len, v_head_dim or head_dim, dtype=dtype, device=device)

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Write k/v [B, H_kv, T, D] at the next T slots; return all keys/values so far and the write start."""
        (k, v), start = self._write(k, v)
        return k, v, start


class LatentKVCache(_SlotCache):
    seq_dim, names = 1, ("latent", "k_rope")

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        kv_lora_rank: int,
        rope_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        super().__init__()
        self.latent = torch.zeros(batch_size, max_len, kv_lora_rank, dtype=dtype, device=device)
        self.k_rope = torch.zeros(batch_size, max_len, rope_dim, dtype=dtype, device=device)

    def update(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Write the normed latent [B, T, R] and rotated key part [B, T, rope_dim]; return both so far and the start."""
        (latent, k_rope), start = self._write(latent, k_rope)
        return latent, k_rope, start
