"""Per-layer health at log steps (trainer.layer_health): where in the model a run goes wrong, cheaply enough to
leave on.

The parameters fall into groups: `embed` (token and position embeddings), `layer_<i>` (transformer block i), `mtp`
(multi-token-prediction modules) and `head` (final norm and output). At a log step, armed by the callback
(launcher/callbacks/layer_health.py) before the step runs, the train module asks this probe for:
- layer_grad_norm/<group>: the group's gradient norm before clipping (the groups' squares sum to grad_norm^2);
- layer_update_ratio/<group>: ||w_after - w_before|| / ||w_before|| over the optimizer step. The weights before
  the step are copied at log steps only: one transient copy of this rank's (sharded) parameters;
- layer_max_logit/layer_<i>: the largest pre-softmax attention logit q.k * scale of block i over the step's
  forwards (model/blocks/attention.py measures it beside the kernel, which never exposes it);
- layer_router_entropy/layer_<i>: the mean entropy (nats) of the MoE router's distribution over experts.

Norms are global (parallel.grouped_squared_norms: DTensor shards made whole, pipeline stages summed), the max
logit a max and the entropy a mean over all ranks, so every layout logs the single process's figures. Under
context parallel the attention kernel is replaced and under parallel.compile the model's forward is compiled, so
there the max logit and the router entropy are not measured (the norms still are); under pipeline parallel not
on the run's first step either, whose forwards include the schedule's shape inference on uninitialised tensors.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
import torch.distributed as dist

from parallel import grouped_squared_norms

if TYPE_CHECKING:
    from launcher.train_modules import TrainModule

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MTP = re.compile(r"(?:^|\.)mtp\.")


def layer_group(name: str) -> str:
    """The group of a parameter or module path (wrapper prefixes such as DDP's `module.` do not matter)."""
    if _MTP.search(name):
        return "mtp"
    block = _BLOCK.search(name + ".")
    if block:
        return f"layer_{block[1]}"
    if "embeddings" in name:
        return "embed"
    return "head"


def layer_groups(n_layers: int, mtp: bool) -> list[str]:
    """Every group of the model, in the order they are logged (the same list on every rank)."""
    return ["embed", *(f"layer_{i}" for i in range(n_layers)), *(["mtp"] if mtp else []), "head"]


class LayerHealth:
    """The probe of one train module. Idle unless `arm(True)`; then `measure_gradients` (before clipping) and
    `measuring_update()` (around the optimizer step) keep device tensors, which `figures()` reads and reduces."""

    def __init__(self, module: TrainModule, measure_forward: bool, pp_group: Any = None) -> None:
        from model.blocks.attention import ScaledDotProductAttention
        from model.blocks.moe import MoE

        cfg = module.cfg.model
        self.groups = layer_groups(cfg.n_layers, cfg.mtp_depth > 0)
        index = {group: i for i, group in enumerate(self.groups)}
        self.device = module.env.device
        self.pp_group = pp_group
        self.params: list[list[torch.Tensor]] = [[] for _ in self.groups]
        self.attention: list[tuple[int, Any]] = []
        self.moes: list[tuple[int, Any]] = []
        for part in module.model_parts:
            for name, param in part.named_parameters():
                if param.requires_grad:
                    self.params[index[layer_group(name)]].append(param)
            if not measure_forward:
                continue
            for name, child in part.named_modules():
                if type(child) is ScaledDotProductAttention:
                    self.attention.append((index[layer_group(name)], child))
                elif isinstance(child, MoE):
                    self.moes.append((index[layer_group(name)], child))
        self.armed = False
        self._grad_sq: Optional[torch.Tensor] = None
        self._update_sq: Optional[torch.Tensor] = None
        self._weight_sq: Optional[torch.Tensor] = None

    def arm(self, on: bool, forward: bool = True) -> None:
        """Measure the next step (True) or nothing (False); `forward`: with the model's forward probes too."""
        self.armed = on
        for _, attention in self.attention:
            attention.measure_max_logit, attention.max_logit = on and forward, None
        for _, moe in self.moes:
            moe.measure_router_entropy, moe.router_entropy = on and forward, None
        self._grad_sq = self._update_sq = self._weight_sq = None

    def _norms(self, tensors: list[list[torch.Tensor]]) -> torch.Tensor:
        return grouped_squared_norms(tensors, self.device, extra_group=self.pp_group)

    def measure_gradients(self) -> None:
        """The groups' squared gradient norms, before clipping (a collective per group and mesh)."""
        if self.armed:
            self._grad_sq = self._norms([[p.grad for p in group if p.grad is not None] for group in self.params])

    @contextlib.contextmanager
    def measuring_update(self) -> Iterator[None]:
        """Around the optimizer step: the groups' squared update and weight norms."""
        if not self.armed:
            yield
            return
        before = [[p.detach().clone() for p in group] for group in self.params]
        yield
        with torch.no_grad():
            deltas = [[p.detach() - b for p, b in zip(group, old)] for group, old in zip(self.params, before)]
        self._update_sq = self._norms(deltas)
        self._weight_sq = self._norms(before)

    def figures(self) -> dict[str, float]:
        """The step's figures by key (see the module docstring); a collective, on every rank. Disarms."""
        record: dict[str, float] = {}
        if self._grad_sq is not None:
            for group, value in zip(self.groups, self._grad_sq.sqrt().tolist()):
                record[f"layer_grad_norm/{group}"] = value
        if self._update_sq is not None:
            ratios = (self._update_sq.sqrt() / self._weight_sq.sqrt().clamp_min(1e-30)).tolist()
            for group, value in zip(self.groups, ratios):
                record[f"layer_update_ratio/{group}"] = value
        record.update(self._max_logits())
        record.update(self._router_entropies())
        self.arm(False)
        return record

    def _max_logits(self) -> dict[str, float]:
        best = torch.full((len(self.groups),), float("-inf"), device=self.device)
        for i, attention in self.attention:
            if attention.max_logit is not None:
                best[i] = torch.maximum(best[i], attention.max_logit.to(self.device))
        if dist.is_initialized():
            dist.all_reduce(best, op=dist.ReduceOp.MAX)
        return {f"layer_max_logit/{g}": v for g, v in zip(self.groups, best.tolist()) if v != float("-inf")}

    def _router_entropies(self) -> dict[str, float]:
        sums = torch.zeros(2, len(self.groups), dtype=torch.float64, device=self.device)  # entropy sums, counts
        for i, moe in self.moes:
            if moe.router_entropy is not None:
                total, count = moe.router_entropy
                sums[0, i] += total.to(self.device, torch.float64)
                sums[1, i] += count
        if dist.is_initialized():
            dist.all_reduce(sums)
        return {
            f"layer_router_entropy/{g}": total / count
            for g, total, count in zip(self.groups, *sums.tolist())
            if count > 0
        }
