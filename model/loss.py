"""Language-model losses: cross-entropy with optional PaLM z-loss, whole or in chunks.

Chunking exists because fp32 logits are the largest activation of a small-dim / large-vocab model
(batch x seq x vocab x 4 bytes). Each chunk's head + loss runs under activation checkpointing, so its logits are
freed after the forward and recomputed in the backward: at most one chunk of fp32 logits is alive at a time (a few
chunk-sized fp32 tensors at the peak: the upcast, log-softmax and their gradients), never the whole batch's.

The model's own loss (Transformer.forward with labels) chunks the output head together with the loss, so even the
bf16 logits exist one chunk at a time. Where the logits come out of the model whole (tensor parallel's
vocab-sharded logits, the last pipeline stage), `cross_entropy_loss(..., chunk_size=)` still upcasts and
normalises them one chunk at a time.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # labels the loss skips (PyTorch's and transformers' convention)


def _loss_sums(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, with_z_loss: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of CE and sum of z-loss (logsumexp^2) over labels != ignore_index, in fp32."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    labels = labels.reshape(-1)
    ce_sum = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    if not with_z_loss:
        return ce_sum, torch.zeros((), device=logits.device)
    valid = labels != ignore_index
    log_partition = torch.logsumexp(logits, dim=-1)
    z_sum = (log_partition.pow(2) * _like(valid, log_partition)).sum()
    return ce_sum, z_sum


def _like(mask: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`mask` (a plain tensor, identical on every rank) in a form that combines with `other`: under tensor
    parallel's loss_parallel the logits are vocab-sharded DTensors, and DTensor refuses to mix with plain tensors."""
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(other, DTensor):
        return mask
    mesh = other.device_mesh
    return DTensor.from_local(mask, mesh, [Replicate()] * mesh.ndim, run_check=False)


def _valid_count(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return (labels != ignore_index).sum().clamp(min=1)


def cross_entropy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    z_loss_weight: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Mean next-token CE over labels != ignore_index (labels already shifted), plus z_loss_weight * mean(lse^2);
    `chunk_size` tokens at a time (model.loss_chunk_size) when given."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on batch/sequence")
    if chunk_size is not None and labels.numel() > chunk_size:
        ce, z = chunked_cross_entropy(
            logits, labels, _identity, chunk_size=chunk_size, with_z_loss=z_loss_weight > 0, ignore_index=ignore_index
        )
        return ce + z_loss_weight * z if z_loss_weight > 0 else ce
    ce_sum, z_sum = _loss_sums(logits, labels, ignore_index, z_loss_weight > 0)
    count = _valid_count(labels, ignore_index)
    return (ce_sum + z_loss_weight * z_sum) / count


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def chunked_cross_entropy(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    *,
    chunk_size: int,
    with_z_loss: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean CE, mean z-loss) of head(hidden) against labels, `chunk_size` tokens at a time.

    hidden [B, T, dim] (final-normed), labels [B, T]; head maps hidden -> logits (the identity when `hidden`
    already holds the logits)."""
    if chunk_size <= 0:
        raise ValueError(f"model.loss_chunk_size must be positive, got {chunk_size}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _loss_sums(head(h), y, ignore_index, with_z_loss)

    ce_total = torch.zeros((), device=hidden.device)
    z_total = torch.zeros((), device=hidden.device)
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, flat_hidden.shape[0], chunk_size):
        h, y = flat_hidden[start : start + chunk_size], flat_labels[start : start + chunk_size]
        if recompute:
            ce, z = checkpoint(chunk_loss, h, y, use_reentrant=False)
        else:
            ce, z = chunk_loss(h, y)
        ce_total = ce_total + ce
        z_total = z_total + z
    count = _valid_count(flat_labels, ignore_index)
    return ce_total / count, z_total / count
