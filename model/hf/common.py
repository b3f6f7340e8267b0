"""What every part of the Hugging Face conversion shares: the error type, file names, and tensor name rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3  # transformers' default shard size


class HFConversionError(ValueError):
    """A config or checkpoint cannot be represented on the other side; the message says why and what to change."""


@dataclass
class Rule:
    """HF tensors `hf` <-> Loom tensors `loom`, with the conversion each way (lists in the keys' order)."""

    hf: tuple[str, ...]
    loom: tuple[str, ...]
    to_hf: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda ts: ts
    to_loom: Callable[[list[torch.Tensor]], list[torch.Tensor]] = lambda ts: ts


def same(hf: str, loom: str) -> Rule:
    return Rule((hf,), (loom,))


def transposed(hf: str, loom: str) -> Rule:
    """GPT-2 Conv1D stores [in, out]; nn.Linear stores [out, in]."""
    return Rule((hf,), (loom,), lambda ts: [ts[0].t()], lambda ts: [ts[0].t()])


def split_rows(hf: str, loom: tuple[str, ...], sizes: list[int]) -> Rule:
    """One fused HF tensor (Phi-3's qkv_proj / gate_up_proj) <-> Loom tensors stacked along dim 0."""
    return Rule((hf,), loom, lambda ts: [torch.cat(ts, dim=0)], lambda ts: list(ts[0].split(sizes, dim=0)))


def interleaved_to_halves(width: int) -> torch.Tensor:
    """Row order turning a rotary block stored as interleaved pairs (x0, x1), (x2, x3), ... (DeepSeek, ERNIE) into
    Loom's halves (x0, x2, ..., x1, x3, ...): rotate_half RoPE on the permuted rows computes what pairwise RoPE
    computes on the original ones, up to the same permutation of the outputs of q and k, which the dot product
    q.k does not see."""
    return torch.cat([torch.arange(0, width, 2), torch.arange(1, width, 2)])


def permute_rotary_rows(t: torch.Tensor, block: int, start: int, width: int, *, to_halves: bool) -> torch.Tensor:
    """Reorder rows start..start+width of every `block`-row group of a weight/bias (dim 0) between interleaved pairs
    and halves."""
    order = interleaved_to_halves(width)
    if not to_halves:
        order = torch.argsort(order)
    grouped = t.reshape(-1, block, *t.shape[1:])
    rotary = grouped[:, start : start + width].index_select(1, order)
    return torch.cat([grouped[:, :start], rotary, grouped[:, start + width :]], dim=1).reshape(t.shape)


def permuted(hf: str, loom: str, block: int, start: int, width: int) -> Rule:
    return Rule(
        (hf,),
        (loom,),
        lambda ts: [permute_rotary_rows(ts[0], block, start, width, to_halves=False)],
        lambda ts: [permute_rotary_rows(ts[0], block, start, width, to_halves=True)],
    )


def apply_rules(
    rules: list[Rule], source: dict[str, torch.Tensor], *, to_hf: bool, where: str
) -> dict[str, torch.Tensor]:
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
