"""LoRA adapters on a built model (model.lora): y = W x + b + (alpha / r) * B A dropout(x), as peft's LoRA Linear.

`apply_lora(model, cfg.lora)` turns the chosen `nn.Linear` projections into `LoRALinear` in place (same module,
same `weight`/`bias` Parameters, so the base keeps its state-dict names and a checkpoint without adapters still
fills it; the weight in model.lora.base_dtype, e.g. bf16 to halve the frozen base) with two new fp32 Parameters
`lora_A` [r, in] and `lora_B` [out, r], and freezes every other parameter: only adapters reach the optimizer.
Initialisation as peft's default: A kaiming-uniform (a = sqrt(5)), B zeros, so a fresh adapter changes nothing.

Targets (model.config.LORA_TARGETS) per block:
- attention: q, k, v, o -> wq, wk, wv, wo; latent attention (MLA): q -> wq (or the low-rank wq_a and wq_b), o -> wo;
  its keys and values come from one joint latent (wkv_a, wkv_b), so k and v do not exist there.
- feed-forward: gate, up, down -> w1, w3, w2 (GELU MLPs: up -> w1, down -> w2, no gate); in MoE layers the shared
  experts' MLP. Routed experts (stacked [E, ...] weights, model/blocks/moe.py's GroupedExperts) get no adapters.
A target that matches no projection of the model is refused, naming model.lora.targets.

Plain PyTorch: parallel/tensor.py places lora_A / lora_B beside a sharded base weight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks.attention import Attention
from model.blocks.mla import MultiHeadLatentAttention
from model.blocks.mlp import FeedForward
from model.config import LoRAConfig, ModelConfig
from model.dtypes import torch_dtype

ADAPTER_SUFFIXES = (".lora_A", ".lora_B")


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank adapter; made from an existing Linear by `LoRALinear.adapt` (never built);
    `reset_adapter` (called by the model's init_weights) draws A."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter
    lora_scale: float
    lora_dropout: float

    @classmethod
    def adapt(cls, linear: nn.Linear, lora: LoRAConfig) -> "LoRALinear":
        """`linear` itself, now a LoRALinear with fresh adapters on its device and in its dtype."""
        weight = linear.weight
        linear.__class__ = cls
        linear.lora_A = nn.Parameter(torch.empty(lora.rank, weight.shape[1], device=weight.device, dtype=weight.dtype))
        linear.lora_B = nn.Parameter(torch.empty(weight.shape[0], lora.rank, device=weight.device, dtype=weight.dtype))
        weight.data = weight.data.to(torch_dtype(lora.base_dtype))  # the frozen base may be held narrower
        linear.lora_dropout = lora.dropout  # a float, not a submodule: TP styles partition every submodule
        linear.lora_scale = lora.scale
        with torch.no_grad():  # no random draw here: init_weights() draws A after the base, as the seed's model
            linear.lora_A.zero_()
            linear.lora_B.zero_()
        return linear

    @torch.no_grad()
    def reset_adapter(self) -> None:
        """peft's default initialisation: A kaiming-uniform, B zeros (the adapter starts as the identity)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_forward(x, self.lora_A, self.lora_B)

    def lora_forward(self, x: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
        """W x + b + scale * B A dropout(x), with the adapters given (a layout may wrap them); a base held in
        another dtype than x (model.lora.base_dtype) is cast for the matmul (autocast casts it anyway)."""
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        out = F.linear(x, weight, self.bias)
        if not self.lora_scale:  # adapters_disabled: the base alone
            return out
        if self.lora_dropout > 0:
            x = F.dropout(x, self.lora_dropout, self.training)
        return out + F.linear(F.linear(x, lora_a), lora_b) * self.lora_scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lora_rank={self.lora_A.shape[0]}, lora_scale={self.lora_scale}"


def _target_modules(module: nn.Module) -> dict[str, list[str]]:
    """Target -> names of the Linear children of one attention or feed-forward module."""
    if isinstance(module, Attention):
        return {"q": ["wq"], "k": ["wk"], "v": ["wv"], "o": ["wo"]}
    if isinstance(module, MultiHeadLatentAttention):
        return {"q": ["wq"] if module.wq is not None else ["wq_a", "wq_b"], "o": ["wo"]}
    if isinstance(module, FeedForward):
        if module.w3 is None:
            return {"up": ["w1"], "down": ["w2"]}
        return {"gate": ["w1"], "up": ["w3"], "down": ["w2"]}
    return {}


def lora_module_names(model: nn.Module, targets: list[str]) -> list[str]:
    """Qualified names of the Linear modules `targets` choose; ValueError naming model.lora.targets for a target
    the model does not have."""
    found: dict[str, list[str]] = {t: [] for t in targets}
    available: set[str] = set()
    for name, module in model.named_modules():
        for target, children in _target_modules(module).items():
            available.add(target)
            if target in found:
                found[target] += [f"{name}.{child}" for child in children]
    missing = [t for t, names in found.items() if not names]
    if missing:
        raise ValueError(
            f"model.lora.targets: {missing} do not exist in this model (latent attention has no separate k/v, GELU "
            f"MLPs no gate, routed MoE experts take no adapters); its targets: {sorted(available)}"
        )
    return [name for names in found.values() for name in names]


def apply_lora(model: nn.Module, lora: LoRAConfig) -> nn.Module:
    """Adapters on the chosen projections of `model` (in place), every other parameter frozen."""
    for param in model.parameters():
        param.requires_grad_(False)
    for name in lora_module_names(model, list(lora.targets)):
        LoRALinear.adapt(model.get_submodule(name), lora)
    return model


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Forwards of `model` inside compute the base model alone (every adapter's scale 0), as peft's
    disable_adapter: DPO's reference when only adapters train."""
    adapted = [module for _, module in lora_modules(model)]
    scales = [module.lora_scale for module in adapted]
    for module in adapted:
        module.lora_scale = 0.0
    try:
        yield
    finally:
        for module, scale in zip(adapted, scales):
            module.lora_scale = scale


def is_adapter_key(key: str) -> bool:
    return key.endswith(ADAPTER_SUFFIXES)


def adapter_bases(state: dict[str, torch.Tensor]) -> list[str]:
    """Module names carrying adapters in a state dict (keys `<name>.lora_A` / `<name>.lora_B`)."""
    return sorted({key[: -len(".lora_A")] for key in state if key.endswith(".lora_A")})


def merged_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """The state dict with every adapter folded into its base weight (W + scale * B A, in float32 or wider, then
    the wider of the weight's and the adapters' dtypes) and the config without adapters: the plain model that
    computes what the adapted one does."""
    merged = {key: value for key, value in state.items() if not is_adapter_key(key)}
    for base in adapter_bases(state):
        weight = merged[f"{base}.weight"]
        lora_a, lora_b = state[f"{base}.lora_A"], state[f"{base}.lora_B"]
        wide = torch.promote_types(torch.promote_types(weight.dtype, lora_a.dtype), torch.float32)
        delta = lora_b.to(wide) @ lora_a.to(wide)
        merged[f"{base}.weight"] = (weight.to(wide) + cfg.lora.scale * delta).to(
            torch.promote_types(weight.dtype, lora_a.dtype)  # a bf16 base with fp32 adapters merges into fp32
        )
    return merged, dataclasses.replace(cfg, lora=LoRAConfig())


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts of a built model."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
