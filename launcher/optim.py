"""AdamW over a train module's model parts, with decay only on matrices that are not embeddings.

Decaying norm gains, biases and embedding rows pulls them towards zero for no regularisation benefit (the usual
practice since GPT-2/Llama); both exclusions are switchable in the `optim` config.

`Optimizers` is torchtitan's container idea: one torch optimizer per model part (a pipeline rank may hold several
stage modules; every other layout has one part), stepped together, checkpointed by parameter name through
torch.distributed.checkpoint.state_dict so the state is layout-free. Only the optimizer's tensors (moments, step
counts) are checkpointed; its hyperparameters come from this run's config, so a deliberately changed `optim.lr`
takes effect on resume (launcher/schedule.py sets the lr of the resumed step).
"""

from __future__ import annotations

from typing import Any

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


def parameter_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed and not decayed. Tied parameters are counted once (by identity)."""
    decay, no_decay, seen = [], [], set()
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


def build_optimizer(model: nn.Module, cfg: Any, device_type: str) -> torch.optim.Optimizer:
    """AdamW, fused on CUDA (optim.fused), else multi-tensor (foreach) where the parameters allow it: foreach
    kernels take one kind of tensor, and tensor parallel without sequence parallel leaves the norms plain tensors
    beside DTensor weights, which only the per-parameter loop handles."""
    groups = parameter_groups(model, cfg)
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
    """One AdamW per model part, stepped together; state dicts merged by parameter name."""

    def __init__(self, model_parts: list[nn.Module], cfg: Any, device_type: str) -> None:
        self.model_parts = list(model_parts)
        self.optimizers = [build_optimizer(part, cfg, device_type) for part in self.model_parts]

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def _flat_states(self) -> list[dict[str, Any]]:
        return [
            get_optimizer_state_dict(part, optimizer, options=_FLAT)
            for part, optimizer in zip(self.model_parts, self.optimizers)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The tensors of every part's optimizer state ("state.<parameter name>.<key>"), merged."""
        return merge_disjoint(
            [{k: v for k, v in flat.items() if k.startswith(_STATE_PREFIX)} for flat in self._flat_states()],
            "optimizer",
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Each part takes its parameters' entries of `state`; hyperparameters stay this run's."""
        for part, optimizer, flat in zip(self.model_parts, self.optimizers, self._flat_states()):
            flat.update({k: state[k] for k in flat if k.startswith(_STATE_PREFIX)})
            set_optimizer_state_dict(part, optimizer, flat, options=_FLAT)


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
