"""The torch layouts' train module: single process, DDP, FSDP2/HSDP, TP(+SP), CP, EP and their mixes.

One laid-out module, one AdamW. A step runs the rank's batch in `trainer.micro_batch_size` micro batches (the base
module's `accumulate`) through `parallel.compute_loss` (which cuts sequences for context parallel and takes the
loss of vocab-sharded logits for tensor parallel), each loss divided so that the summed gradient, after
data-parallel averaging, is that of the mean over the global batch's counted labels (base.py: `loss_weights`);
DDP syncs gradients on the last micro batch only. Then global-norm clipping (parallel.clip_grad_norm_, which handles
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
from launcher.train_modules.dpo import build_objective
from launcher.validation import RunPlan, scoring_width_multiple
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
        self.objective = build_objective(plan, env, self.model, self.plain_model)  # trainer.objective=dpo, else None

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        loss, extra = self.accumulate(inputs, labels, self._forward_backward)
        if self.objective is not None:
            extra.update(self.objective.step_figures())
        if self.scaler is not None:
            for optimizer in self.optimizers.optimizers:
                self.scaler.unscale_(optimizer)
        self.measure_layer_gradients()
        # parallel's clip, not torch's: torch's stacks every norm into one tensor, which fails when gradients live
        # on several meshes or mix plain tensors and DTensors (expert parallel, TP without SP). No host sync.
        grad_norm = clip_grad_norm_(self.model.parameters(), max_grad_norm(self.cfg.optim.grad_clip))
        if self.scaler is None and self.skip_if_not_finite(loss, grad_norm):
            if self.qk_clip is not None:
                self.qk_clip.clear()
            return StepOutput(loss, grad_norm.detach(), extra, skipped=True)
        if self.spike_drops_update(loss, grad_norm):
            if self.qk_clip is not None:
                self.qk_clip.clear()
            if self.scaler is not None:
                self.scaler.update()  # closes the step the scaler unscaled (its scale is kept)
            return StepOutput(loss, grad_norm.detach(), extra)
        with self.measuring_layer_update():  # the update ratio covers QK-clip's rescaling too
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
                if self.objective is not None:
                    loss = self.objective.loss(micro.inputs, micro.labels)
                else:
                    loss = compute_loss(self.model, micro.inputs, micro.labels, self.dims)
            term = micro.term(loss)
            (term if self.scaler is None else self.scaler.scale(term)).backward()
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
            if self.objective is not None:
                return self.objective.loss(inputs, labels, record=False)
            loss = compute_loss(self.model, inputs, labels, self.dims)
        return loss.full_tensor() if hasattr(loss, "full_tensor") else loss

    def kv_cache_model(self) -> Optional[nn.Module]:
        # Decoding one token through the KV cache cannot be split by sequence (TP+SP, CP): those decode by full
        # forwards of the laid-out model (the base module's generate_greedy).
        return self.plain_model if self.dims.tp == 1 and self.dims.cp == 1 else None

    @property
    def forward_is_collective(self) -> bool:
        return self.dims.fsdp_enabled or self.dims.tp > 1 or self.dims.ep > 1 or self.dims.cp > 1

    def scoring_shape(self, rows: int, width: int) -> tuple[int, int]:
        # Training's rule for the sequence length: sequence parallel shards it by tp, context parallel cuts it into
        # cp (zig-zag: 2*cp) chunks.
        multiple = scoring_width_multiple(self.dims)
        return rows, -(-width // multiple) * multiple

    def scoring_model(self) -> nn.Module:
        # DDP's wrapper would broadcast buffers in its forward; the plain module computes the same logits alone.
        return self.plain_model if isinstance(self.model, DistributedDataParallel) else self.model

    @torch.no_grad()
    def forward_per_token(self, model, tokens, per_token, *, run_autocast: bool = True) -> torch.Tensor:
        """Under context parallel as training cuts the sequence (parallel.compute_loss): this cp rank's chunks
        (zig-zag under cp_load_balance) with their global positions through the model, `per_token` on the local
        logits, then every rank's chunks gathered over the cp mesh and put back in sequence order."""
        if self.dims.cp == 1:
            return super().forward_per_token(model, tokens, per_token, run_autocast=run_autocast)
        from parallel.context import gather_from_context_parallel, shard_for_context_parallel

        cp_mesh = self.dims.submesh("cp")
        local, _, columns = shard_for_context_parallel(tokens, None, None, cp_mesh, self.dims.cfg)
        with torch.compiler.set_stance("force_eager"), self.forward_precision(run_autocast):
            values = per_token(model(local, positions=columns), columns)
        return gather_from_context_parallel(values, cp_mesh, self.dims.cfg)

    def log_extras(self) -> dict[str, float]:
        extras = {"loss_scale": self.scaler.get_scale()} if self.scaler is not None else {}
        if self.max_attn_logit is not None:
            extras["max_attn_logit"] = float(self.max_attn_logit)
        return extras
