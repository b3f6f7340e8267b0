"""trainer.objective=dpo in the torch layouts' train module (one process, DDP, FSDP/HSDP): the DPO loss of a micro
batch instead of the next-token loss, with a reference model.

The reference (dpo.reference):
- frozen_copy: a second model holding the run's initial weights (trainer.init_from's, else the seed's, also on a
  resumed run), every parameter frozen: whole on each rank for one process and DDP, sharded like the policy
  under FSDP;
- adapters_off: the trained model itself with its LoRA adapters disabled (model.lora.adapters_disabled, as TRL
  with peft), i.e. the frozen base: no second model.
Each micro batch runs the reference forward under no_grad, then the policy forward (through the laid-out model, so
DDP and FSDP sync gradients as for language modelling), both under the run's autocast; launcher/dpo.py turns the
two sets of log-probabilities into the loss and the figures. The figures of the step's micro batches are averaged
and logged as dpo/... (means over ranks, as every extra figure).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from launcher.distributed import DistEnv
from launcher.dpo import IGNORE_INDEX, dpo_loss, sequence_logps, sides
from launcher.train_modules.base import initial_model, materialize_model
from launcher.validation import RunPlan
from model.lora import adapters_disabled


def frozen_reference(plan: RunPlan, env: DistEnv) -> nn.Module:
    """The run's initial model, frozen: plain where the layout keeps whole models, sharded under FSDP."""
    init_from = Path(plan.cfg.trainer.init_from) if plan.cfg.trainer.init_from else None
    if plan.dims.shards_parameters:
        reference = materialize_model(plan, env, init_from)
    else:
        reference = initial_model(plan, env, init_from)
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference.train(False)


class DPOObjective:
    def __init__(self, plan: RunPlan, env: DistEnv, policy: nn.Module, plain_policy: nn.Module) -> None:
        self.dpo = plan.cfg.dpo
        self.policy = policy  # the laid-out model (DDP wrapper, FSDP module): its forward syncs gradients
        if self.dpo.reference == "frozen_copy":
            self.reference: nn.Module = frozen_reference(plan, env)
            self.reference_context = contextlib.nullcontext
        else:
            self.reference = plain_policy
            self.reference_context = lambda: adapters_disabled(plain_policy)
        # A model trained with document masks attends across the EOS inside a pair (a chat template's end of turn),
        # as its HF export and TRL do: the forwards get an all-ones attention mask.
        self.document_masking = plan.cfg.model.document_mask_eos_id is not None
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor, *, record: bool = True) -> torch.Tensor:
        """The DPO loss of one micro batch (inputs, labels: `batch[:, :-1]`, `batch[:, 1:]` of launcher/dpo.py's
        layout); call under the run's autocast. With `record` its figures join the step's (not for held-out
        batches)."""
        tokens, targets = sides(inputs, labels)
        kwargs = {"attention_mask": torch.ones_like(tokens, dtype=torch.bool)} if self.document_masking else {}
        with torch.no_grad(), self.reference_context():
            reference_logps = sequence_logps(self.reference(tokens, **kwargs), targets)
        self._reshard(self.reference)
        policy_logps = sequence_logps(self.policy(tokens, **kwargs), targets)
        result = dpo_loss(
            policy_logps,
            reference_logps,
            (targets != IGNORE_INDEX).sum(dim=-1),
            beta=self.dpo.beta,
            loss_type=self.dpo.loss_type,
        )
        if record:
            for name, value in result.figures.items():
                self._sums[name] = self._sums.get(name, 0) + value
            self._count += 1
        return result.loss

    def step_figures(self) -> dict[str, torch.Tensor]:
        """The mean figures of the micro batches since the last call (device tensors)."""
        figures = {name: total / self._count for name, total in self._sums.items()} if self._count else {}
        self._sums, self._count = {}, 0
        return figures

    def _reshard(self, module: nn.Module) -> None:
        """A frozen FSDP copy keeps the weights its forward gathered (no backward reshards them): put them back."""
        if module is self.policy:
            return
        from torch.distributed.fsdp import FSDPModule

        for part in module.modules():
            if isinstance(part, FSDPModule):
                part.reshard()


def build_objective(plan: RunPlan, env: DistEnv, policy: nn.Module, plain: nn.Module) -> Optional[DPOObjective]:
    """The objective of trainer.objective other than the next-token loss, or None."""
    return DPOObjective(plan, env, policy, plain) if plan.cfg.trainer.objective == "dpo" else None
