"""Which keys each query may attend: causal, sliding windows, padding and document boundaries.

A training forward builds its masks once (`shared_masks`) and every layer reuses them, instead of each layer
building a [T, T] mask of its own. The masks come in the form of the attention backend (model.attention_backend):

- sdpa: one boolean mask per distinct window, [1, 1, T, T] (or [B, 1, T, T] with document masking), for SDPA's
  masked kernel. Layers that are plain causal (no window, no document mask) need none: they take SDPA's
  `is_causal` flash path.
- flex: one FlexAttention `BlockMask` per distinct window: which 128 x 128 blocks of the score matrix hold any
  allowed pair, plus the rule itself (`mask_mod`) for the partial blocks. No [T, T] tensor exists when it is built
  under torch.compile, and blocks outside the window or the document are never computed, so a sliding layer costs
  O(T * window). FlexAttention is a generated kernel: fast only compiled (under parallel.compile, or compiled here
  on CUDA); torch 2.13 refuses its backward on CPU (`flex_attention` raises NotImplementedError), so CPU runs
  train with sdpa.

Document masking (model.document_mask_eos_id): a packed sequence holds several documents, each ending with the
end-of-document token; a query attends only to keys of its own document (the end token belongs to the document it
ends). It applies to whole-sequence forwards (training, evaluation, uncached scoring); decoding with a KV cache or
a padding mask attends across an end token inside the prompt, as the Hugging Face export of the model does.
"""

from __future__ import annotations

from typing import Any, Optional

import torch


def build_attention_mask(
    q_len: int,
    k_len: int,
    *,
    q_start: int = 0,
    sliding_window: Optional[int] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Boolean mask [B or 1, 1, q_len, k_len], True where query i (at key slot q_start + i) may attend key j.

    Causal, and with a sliding window Mistral's rule: q - window < j <= q. Padded keys (key_padding_mask False)
    are hidden; a query that would then see nothing (a padding query) is allowed to see itself so its softmax
    stays finite (its output is never used)."""
    q_slot = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    k_slot = torch.arange(k_len, device=device)[None, :]
    mask = k_slot <= q_slot
    if sliding_window is not None:
        mask = mask & (k_slot > q_slot - sliding_window)
    mask = mask[None, None]
    if key_padding_mask is not None:
        if key_padding_mask.shape[-1] != k_len:
            raise ValueError(f"attention_mask covers {key_padding_mask.shape[-1]} keys but attention sees {k_len}")
        mask = mask & key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        mask = mask | (k_slot == q_slot)[None, None]
    return mask


def document_ids(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] index of the document each token belongs to within its row; an end-of-document token closes (belongs
    to) its document, the token after it starts the next."""
    ends = (tokens == eos_id).to(torch.int32)
    return torch.cumsum(ends, dim=-1) - ends


def dense_mask(seq_len: int, window: Optional[int], docs: Optional[torch.Tensor], device) -> torch.Tensor:
    """Boolean [1 or B, 1, T, T]: causal, within `window`, within the document (`docs` [B, T], or None)."""
    mask = build_attention_mask(seq_len, seq_len, sliding_window=window, device=device)
    if docs is not None:
        mask = mask & (docs[:, None, :, None] == docs[:, None, None, :])
    return mask


def block_mask(seq_len: int, window: Optional[int], docs: Optional[torch.Tensor], device):
    """FlexAttention BlockMask of the same rule as `dense_mask`."""
    from torch.nn.attention.flex_attention import create_block_mask

    def allowed(b, h, q_idx, kv_idx):
        keep = kv_idx <= q_idx
        if window is not None:
            keep = keep & (q_idx - kv_idx < window)
        if docs is not None:
            keep = keep & (docs[b, q_idx] == docs[b, kv_idx])
        return keep

    batch = docs.shape[0] if docs is not None else None
    return create_block_mask(allowed, batch, None, seq_len, seq_len, device=device)


def shared_masks(
    windows: list[Optional[int]],
    seq_len: int,
    device,
    *,
    backend: str,
    docs: Optional[torch.Tensor],
    softcap: bool = False,
) -> Optional[dict[Optional[int], Any]]:
    """{window: mask} for the distinct layer `windows` (None: a global layer) of one forward, or None when no layer
    needs one. A global layer without a document mask needs none (SDPA's causal flash path) unless the scores are
    soft-capped, which the flash kernel cannot do."""
    masks: dict[Optional[int], Any] = {}
    for window in dict.fromkeys(windows):
        if window is None and docs is None and not softcap:
            continue
        build = block_mask if backend == "flex" else dense_mask
        masks[window] = build(seq_len, window, docs, device)
    return masks or None


_compiled_flex = None


def check_flex_device(q: torch.Tensor) -> None:
    """Say plainly, before torch does, that FlexAttention cannot train on CPU."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
        raise NotImplementedError(
            "model.attention_backend=flex: torch's FlexAttention has no backward on CPU; train with "
            "model.attention_backend=sdpa on CPU (same numbers)"
        )


def flex_attention(q, k, v, *, block_mask, scale: Optional[float], softcap: Optional[float]) -> torch.Tensor:
    """FlexAttention of q [B, H, T, D] over k, v [B, H_kv, T, D] (grouped heads shared natively) with a BlockMask
    and an optional tanh softcap of the scaled scores (Gemma 2)."""
    from torch.nn.attention import flex_attention as flex_module

    check_flex_device(q)
    score_mod = None
    if softcap is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return softcap * torch.tanh(score / softcap)

    fn = flex_module.flex_attention
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        # Uncompiled, FlexAttention materialises the scores; compiled once here (torchtitan does the same), and
        # inlined when the model itself is compiled.
        global _compiled_flex
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_module.flex_attention, dynamic=False)
        fn = _compiled_flex
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
