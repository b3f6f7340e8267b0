"""The torch layouts' train module: single process, DDP, FSDP2/HSDP, TP(+SP), CP, EP and their mixes.

One laid-out module, one AdamW. A step runs the rank's batch in `trainer.micro_batch_size` micro batches (the base
module's `accumulate`) through `parallel.compute_loss` (which cuts sequences for context parallel and takes the
loss of vocab-sharded logits for tensor parallel), each loss divided by the accumulation steps so the summed
gradient is the mean over the batch (data-parallel averaging then makes it the mean over the global batch); DDP
syncs gradients on the last micro batch only. Then global-norm clipping (parallel.clip_grad_norm_, which handles
mixed DTensor meshes), the optimizer and the lr schedule. The host never waits for the device inside the step:
loss and gradient norm stay device tensors.
fp16 uses torch's GradScaler (its unscale reads a device value: that library's choice).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from launcher.distributed import DistEnv
from launcher.optim import Optimizers
from launcher.qk_clip import QKClip
from launcher.schedule import LRSchedulers
from launcher.train_modules.base import MicroBatch, StepOutput, TrainModule, autocast, materialize_model, max_grad_norm
from launcher.validation import RunPlan, generation_blocked
from parallel import clip_grad_norm_, compute_loss, loss_context


class TorchTrainModule(TrainModule):
    def __init__(self, plan: RunPlan, env: DistEnv, init_from: Optional[Path] = None) -> None:
        super().__init__(plan, env)
        self.model: nn.Module = materialize_model(plan, env, init_from)
        self.model_parts = [self.model]
        self.plain_model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        self.optimizers = Optimizers(self.model_parts, self.cfg.optim, env.device.type)
        self.schedulers = LRSchedulers(self.optimizers.optimizers, self.cfg.schedule, self.cfg.trainer.max_steps)
        precision = self.cfg.trainer.precision
        self.scaler = torch.amp.GradScaler(env.device.type) if precision == "fp16" else None
        self.qk_clip = QKClip.build(self.model_parts, self.cfg.optim)  # None unless optim.muon.qk_clip_tau > 0
        self.max_attn_logit: Optional[torch.Tensor] = None  # the last step's largest logit (QK-clip), for the log

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        loss, extra = self.accumulate(inputs, labels, self._forward_backward)
        if self.scaler is not None:
            for optimizer in self.optimizers.optimizers:
                self.scaler.unscale_(optimizer)
        # parallel's clip, not torch's: torch's stacks every norm into one tensor, which fails when gradients live
        # on several meshes or mix plain tensors and DTensors (expert parallel, TP without SP). No host sync.
        grad_norm = clip_grad_norm_(self.model.parameters(), max_grad_norm(self.cfg.optim.grad_clip))
        if self.scaler is None and self.skip_if_not_finite(loss, grad_norm):
            if self.qk_clip is not None:
                self.qk_clip.clear()
            return StepOutput(loss, grad_norm.detach(), extra, skipped=True)
        if self.scaler is not None:
            for optimizer in self.optimizers.optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            self.optimizers.step()
        if self.qk_clip is not None:
            maxima = self.qk_clip.apply()
            self.max_attn_logit = None if maxima is None else maxima.max()
        self.optimizers.zero_grad()
        self.schedulers.step()
        self.balance_experts(extra)
        return StepOutput(loss, grad_norm.detach(), extra)

    def _forward_backward(self, micro: MicroBatch) -> torch.Tensor:
        with self._gradient_sync(enabled=micro.last), loss_context(self.dims):
            with autocast(self.cfg.trainer.precision, self.env.device):
                loss = compute_loss(self.model, micro.inputs, micro.labels, self.dims)
            scaled = loss / micro.count
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
        loss = loss.detach()
        return loss.full_tensor() if hasattr(loss, "full_tensor") else loss  # DTensor under loss_parallel

    def step_is_finite(self, out: StepOutput) -> torch.Tensor:
        # Under fp16 an infinite gradient norm is the loss scaler's business (it skips that step and lowers the
        # scale); the weights stay finite, so only the loss says whether the run broke.
        if self.scaler is not None:
            return torch.isfinite(out.loss).all()
        return super().step_is_finite(out)

    def _gradient_sync(self, enabled: bool):
        """DDP all-reduces gradients on every backward unless told not to: only the last micro batch syncs."""
        if not enabled and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def eval_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        with loss_context(self.dims), autocast(self.cfg.trainer.precision, self.env.device):
            loss = compute_loss(self.model, inputs, labels, self.dims)
        return loss.full_tensor() if hasattr(loss, "full_tensor") else loss

    def generation_model(self) -> tuple[Optional[nn.Module], str]:
        # Generation runs the model one token at a time, which sequence-sharded layouts (TP+SP, CP) cannot do.
        why_not = generation_blocked(self.dims)
        if why_not is not None:
            return None, f"sample generation is skipped under {why_not}"
        return self.plain_model, ""

    @property
    def forward_is_collective(self) -> bool:
        return self.dims.fsdp_enabled or self.dims.tp > 1 or self.dims.ep > 1 or self.dims.cp > 1

    def scoring_shape(self, rows: int, width: int) -> tuple[int, int]:
        # Sequence parallel shards the residual stream on the sequence: the width must divide by tp.
        tp = self.dims.tp
        return rows, -(-width // tp) * tp

    def scoring_model(self) -> nn.Module:
        # DDP's wrapper would broadcast buffers in its forward; the plain module computes the same logits alone.
        return self.plain_model if isinstance(self.model, DistributedDataParallel) else self.model

    def score_batch(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.forward_scores(self.scoring_model(), tokens, targets)

    def log_extras(self) -> dict[str, float]:
        extras = {"loss_scale": self.scaler.get_scale()} if self.scaler is not None else {}
        if self.max_attn_logit is not None:
            extras["max_attn_logit"] = float(self.max_attn_logit)
        return extras
