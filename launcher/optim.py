"""AdamW (or Muon + AdamW) over a train module's model parts, with decay only on matrices that are not embeddings.

Decaying norm gains, biases and embedding rows pulls them towards zero for no regularisation benefit (the usual
practice since GPT-2/Llama); both exclusions are switchable in the `optim` config.

`Optimizers` is torchtitan's container idea: one torch optimizer per model part (a pipeline rank may hold several
stage modules; every other layout has one part), stepped together, checkpointed by parameter name through
torch.distributed.checkpoint.state_dict so the state is layout-free. Only the optimizer's tensors (moments, step
counts) are checkpointed; its hyperparameters come from this run's config, so a deliberately changed `optim.lr`
takes effect on resume (launcher/schedule.py sets the lr of the resumed step).

optim.name=muon gives each part two torch optimizers: launcher/muon.py's Muon over the hidden matrices (every
parameter of 2 or more dims with both of its last two dims above 1, apart from embeddings and the names in
`optim.muon.adamw_params`) and AdamW over the rest. torch's get_optimizer_state_dict takes both at once, so the
checkpoint holds `momentum_buffer` for Muon's parameters and `exp_avg`/`exp_avg_sq`/`step` for AdamW's, by name.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any, Iterable

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

# Optimizer state keyed by parameter name ("state.<fqn>.exp_avg"), not by param-group index: pipeline stages hold
# different parameters, and an indexed list would collide between them; named keys also load onto any layout.
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)
_STATE_PREFIX = "state."


def optimizer_state_key(parameter_name: str, key: str) -> str:
    """The checkpoint key of one optimizer state entry ("state.<parameter name>.<key>", e.g. exp_avg or step): the
    flat name torch's get_optimizer_state_dict gives it, which every engine's checkpoint uses."""
    return f"{_STATE_PREFIX}{parameter_name}.{key}"


def parameter_groups(model: nn.Module, cfg: Any, exclude: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed and not decayed. Tied parameters are counted once (by identity); parameters whose
    id is in `exclude` (Muon's) are left out."""
    decay, no_decay, seen = [], [], set(exclude)
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_embedding = isinstance(module, nn.Embedding)
            is_vector = param.ndim < 2  # norm gains and biases
            if (is_embedding and not cfg.decay_embeddings) or (is_vector and not cfg.decay_norms_and_biases):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# Wrappers whose names torch inserts into parameter names (compile, activation checkpointing, DDP): dropped before
# matching optim.muon.adamw_params, so the patterns name parameters as the plain model does.
_WRAPPER_NAMES = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "module"})


def plain_name(name: str) -> str:
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_NAMES)


def muon_parameters(model: nn.Module, adamw_params: Iterable[str]) -> list[nn.Parameter]:
    """The hidden matrices Muon updates: parameters of 2 or more dims whose last two dims both exceed 1 (a [1, dim]
    gate is a vector), not in an nn.Embedding, and not named by a pattern of `adamw_params` (the output head by
    default). Tied parameters once, in module order."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    patterns = list(adamw_params)
    chosen, seen = [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen or id(param) in embeddings:
            continue
        seen.add(id(param))
        if param.ndim < 2 or min(param.shape[-2:]) < 2:
            continue
        if any(fnmatch(plain_name(name), pattern) for pattern in patterns):
            continue
        chosen.append(param)
    return chosen


def build_optimizers(model: nn.Module, cfg: Any, device_type: str) -> list[torch.optim.Optimizer]:
    """The optimizers of one model part: [AdamW], or [AdamW, Muon] for optim.name=muon (AdamW first: its lr is the
    one logged). A part with no parameter left for one of them (a pipeline stage) goes without it."""
    if cfg.name != "muon":
        return [build_optimizer(model, cfg, device_type)]
    from launcher.muon import Muon

    matrices = muon_parameters(model, cfg.muon.adamw_params)
    m = cfg.muon
    settings = dict(momentum=m.momentum, nesterov=m.nesterov, ns_steps=m.ns_steps, ns_dtype=m.ns_dtype)
    lr = m.lr if m.lr is not None else cfg.lr
    muon = [Muon(matrices, lr=lr, weight_decay=cfg.weight_decay, lr_rule=m.lr_rule, **settings)] if matrices else []
    groups = parameter_groups(model, cfg, exclude=frozenset(id(p) for p in matrices))
    adamw = [build_optimizer(model, cfg, device_type, groups)] if any(g["params"] for g in groups) or not muon else []
    return adamw + muon


def build_optimizer(
    model: nn.Module, cfg: Any, device_type: str, groups: list[dict[str, Any]] | None = None
) -> torch.optim.Optimizer:
    """AdamW, fused on CUDA (optim.fused), else multi-tensor (foreach) where the parameters allow it: foreach
    kernels take one kind of tensor, and tensor parallel without sequence parallel leaves the norms plain tensors
    beside DTensor weights, which only the per-parameter loop handles. `groups`: parameter_groups(model, cfg)."""
    groups = parameter_groups(model, cfg) if groups is None else groups
    fused = cfg.fused if cfg.fused is not None else device_type == "cuda"
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
        foreach=None if fused else _one_tensor_kind(groups),
    )


def _one_tensor_kind(groups: list[dict[str, Any]]) -> bool:
    """True unless plain tensors and DTensors are mixed (torch: "got mixed torch.Tensor and DTensor")."""
    from torch.distributed.tensor import DTensor

    return len({isinstance(p, DTensor) for group in groups for p in group["params"]}) <= 1


class Optimizers:
    """The optimizers of every model part (AdamW, or AdamW + Muon), stepped together; state dicts merged by
    parameter name. `optimizers` is the flat list (schedulers and loss scalers take each)."""

    def __init__(self, model_parts: list[nn.Module], cfg: Any, device_type: str) -> None:
        self.model_parts = list(model_parts)
        self.part_optimizers = [build_optimizers(part, cfg, device_type) for part in self.model_parts]
        self.optimizers = [optimizer for part in self.part_optimizers for optimizer in part]

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _flat_states(self) -> list[dict[str, Any]]:
        return [
            get_optimizer_state_dict(part, optimizers, options=_FLAT)
            for part, optimizers in zip(self.model_parts, self.part_optimizers)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The tensors of every part's optimizer state ("state.<parameter name>.<key>"), merged."""
        return merge_disjoint(
            [{k: v for k, v in flat.items() if k.startswith(_STATE_PREFIX)} for flat in self._flat_states()],
            "optimizer",
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Each part takes its parameters' entries of `state`; hyperparameters stay this run's."""
        for part, optimizers, flat in zip(self.model_parts, self.part_optimizers, self._flat_states()):
            flat.update({k: state[k] for k in flat if k.startswith(_STATE_PREFIX)})
            set_optimizer_state_dict(part, optimizers, flat, options=_FLAT)


def merge_disjoint(state_dicts: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """One flat state dict from several modules' (pipeline stages hold disjoint parameters, named as in the full
    model); a name held twice would make one module's state overwrite another's, so it is an error."""
    if len(state_dicts) == 1:
        return state_dicts[0]
    merged: dict[str, Any] = {}
    for state in state_dicts:
        for key, value in state.items():
            if key in merged:
                raise ValueError(f"{what} key {key!r} is held by two model parts of one rank")
            merged[key] = value
    return merged
