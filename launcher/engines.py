"""Training steps for the layouts whose step is not "forward/backward on one module, then a torch optimizer".

The trainer's own step (launcher/trainer.py: forward_backward + optimizer_step) covers single process, DDP, FSDP2,
HSDP, TP, CP, EP and their combinations. Two layouts replace that step as a whole, and live here:

- `ZeroStep`: DeepSpeed ZeRO 1/2/3 (parallel.engine=deepspeed). DeepSpeed's engine owns the optimizer, the
  backward (gradient partitioning and reduction), clipping and the step; it also steps our lr schedule.
- `PipelineStep`: pipeline parallel (parallel.pp > 1). The schedule runs the whole per-rank batch in
  parallel.pp_microbatches microbatches (trainer.micro_batch_size does not apply) and only the last stage sees
  the loss. A rank holds one stage module, or several (interleaved and V schedules: parallel.pp_stages_per_rank),
  each with its own optimizer and lr schedule (launcher/optim.py `StageOptimizers`, `StageSchedulers` here),
  stepped together. Its held-out loss goes forward only through the same schedule (`Pipeline.eval_loss`,
  called by launcher.trainer.evaluate; `pipeline_eval_batches` gives it batches of the training shape).

Both expose the same small surface as the trainer's step: `train_step(batch) -> (loss, grad_norm)` where `loss`
is this rank's term of the logged loss (`mean_over_ranks` of it is the global-batch loss), plus `scheduler`.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Optional

import torch
from torch import nn

from launcher.optim import StageOptimizers, parameter_groups
from launcher.schedule import build_scheduler
from parallel import ParallelDims, clip_grad_norm_, loss_context

log = logging.getLogger(__name__)

_DEEPSPEED_PRECISION = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_deepspeed_env(device_type: str) -> None:
    """Environment DeepSpeed needs before its first use.

    - On CPU, DS_ACCELERATOR=cpu (DeepSpeed then communicates over gloo).
    - TORCH_EXTENSIONS_DIR defaults to .cache/torch_extensions under the working directory, so ops DeepSpeed
      JIT-builds are cached per checkout, not in $HOME.
    - LOOM_DEEPSPEED_SHM_COMM=0 marks DeepSpeed's shared-memory CPU all-reduce kernel unavailable: it only speeds
      up CPU collectives and costs a ~30-90 s C++ build on first use (tests set it; DeepSpeed has no switch).
    """
    import os

    if device_type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(".cache", "torch_extensions")))
    if os.environ.get("LOOM_DEEPSPEED_SHM_COMM", "1") == "0":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class ZeroStep:
    """DeepSpeed ZeRO: micro batches through engine(tokens, labels) / engine.backward / engine.step.

    Built with parallel.zero.deepspeed_config (batch sizes, precision, clipping, AdamW hyperparameters and offload
    from our configs) and deepspeed.initialize with our AdamW parameter groups (no decay on norms/embeddings, as
    launcher/optim.py does): parallel.zero.initialize_zero hands DeepSpeed a flat parameter list, which would decay
    every parameter. Our lr schedule is given to DeepSpeed, which steps it at each accumulation boundary.
    """

    def __init__(self, model: nn.Module, cfg: Any, dims: ParallelDims, parallel_cfg: Any, *, grad_accum: int,
                 device: torch.device) -> None:
        prepare_deepspeed_env(device.type)
        import deepspeed

        from parallel.zero import OptimizerSettings, deepspeed_config

        o, t = cfg.optim, cfg.trainer
        settings = OptimizerSettings(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay,
                                     grad_clip=o.grad_clip)
        config = deepspeed_config(parallel_cfg, dims, micro_batch_size=t.micro_batch_size, grad_accum_steps=grad_accum,
                                  optimizer=settings, precision=_DEEPSPEED_PRECISION[t.precision])
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=parameter_groups(model, o), config=config, dist_init_required=False,
            lr_scheduler=lambda optimizer: build_scheduler(optimizer, cfg.schedule, t.max_steps),
        )
        self.micro_batch_size = t.micro_batch_size

    def train_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        micro_batches = batch.split(self.micro_batch_size)
        loss_sum = torch.zeros((), device=batch.device)
        for micro_batch in micro_batches:
            loss = self.engine(micro_batch[:, :-1], micro_batch[:, 1:])
            self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps itself
            self.engine.step()  # optimizer + lr schedule only at the accumulation boundary
            loss_sum += loss.detach().float()
        grad_norm = self.engine.get_global_grad_norm()
        grad_norm = torch.as_tensor(math.nan if grad_norm is None else grad_norm, dtype=torch.float64)
        return loss_sum / len(micro_batches), grad_norm.detach().cpu()


class StageSchedulers:
    """One lr schedule (launcher/schedule.py's LambdaLR) per stage optimizer, stepped together.

    They all count the same steps with the same multiplier, so `state_dict` is the first one's: exactly what a
    single-process run saves under "scheduler", which keeps checkpoints layout-free. `load_state_dict` restores
    every schedule's step count but keeps each one's own base lrs (one per param group of its optimizer: stages
    need not have the same groups, e.g. only the first holds the embeddings), and sets the last lr to the
    schedule's value at that step, as LambdaLR.step would."""

    _OWN_KEYS = ("base_lrs", "_last_lr", "lr_lambdas")

    def __init__(self, optimizers: StageOptimizers, schedule_cfg: Any, max_steps: int) -> None:
        self.schedulers = [build_scheduler(optimizer, schedule_cfg, max_steps) for optimizer in optimizers.optimizers]

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def get_last_lr(self) -> list[float]:
        return self.schedulers[0].get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return self.schedulers[0].state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for scheduler in self.schedulers:
            merged = scheduler.state_dict()
            merged.update({k: v for k, v in state.items() if k not in self._OWN_KEYS})
            scheduler.load_state_dict(merged)
            scheduler._last_lr = [base * multiplier(scheduler.last_epoch)
                                  for base, multiplier in zip(scheduler.base_lrs, scheduler.lr_lambdas)]


class PipelineStep:
    """Pipeline parallel: `Pipeline.step` over this rank's whole batch, then clip over all stages and step.

    Every pp rank of a data-parallel group reads the same batch (dims.dp_rank ignores pp), the first stage feeds
    the tokens, the last stage computes the loss. The gradient norm sums squared norms over the pp group (and over
    this rank's stage modules), so it is the norm of the whole model's gradient."""

    def __init__(self, pipeline: Any, optimizer: StageOptimizers, scheduler: StageSchedulers, dims: ParallelDims,
                 parallel_cfg: Any, mesh: Any, *, precision: str, device: torch.device, grad_clip: float) -> None:
        if precision == "fp16":
            raise ValueError("trainer.precision=fp16 (dynamic loss scaling) is not supported with parallel.pp > 1: "
                             "use trainer.precision=bf16 or fp32")
        self.pipeline, self.optimizer, self.scheduler = pipeline, optimizer, scheduler
        self.dims, self.parallel_cfg = dims, parallel_cfg
        self.pp_group = dims.submesh(mesh, "pp").get_group()
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.device, self.precision = device, precision

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    def train_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with loss_context(self.dims, self.parallel_cfg), self._autocast():
            loss: Optional[torch.Tensor] = self.pipeline.step(batch[:, :-1], batch[:, 1:])
        grad_norm = clip_grad_norm_(list(self.pipeline.parameters()), self.max_norm, extra_group=self.pp_group)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        # Only last-stage ranks (world/pp of them) hold a loss: they contribute pp x loss, the others 0, so the
        # mean over all ranks is the mean over the last-stage ranks.
        if loss is None:
            local = torch.zeros((), device=self.device)
        else:
            local = loss.detach().float().to(self.device) * self.dims.pp
        return local, grad_norm


def pipeline_eval_batches(batches: list[torch.Tensor], rows_per_batch: int, global_batch: int = 0,
                          micro_batch: int = 0) -> list[torch.Tensor]:
    """This rank's held-out rows regrouped into batches of the training per-rank batch size (global batch /
    data-parallel degree): pipeline stages fix their receive-buffer shapes at the first step, so evaluation must
    send the same shape. An incomplete last batch is dropped; no rows or too few give an empty list (logged with
    the setting to raise when `global_batch` and `micro_batch` are given)."""
    if not batches or rows_per_batch < 1:
        return []
    rows = torch.cat(batches)
    held_out, whole = rows.shape[0], rows.shape[0] // rows_per_batch
    if not whole and global_batch and micro_batch:
        log.info("evaluation is skipped under pipeline parallel: it runs whole per-rank batches of %d rows (the "
                 "training shape) but this rank has %d held-out rows; set trainer.eval_batches >= %d (x "
                 "trainer.micro_batch_size=%d rows, >= the global batch) with enough held-out data "
                 "(data.val_fraction)", rows_per_batch, held_out, -(-global_batch // micro_batch), micro_batch)
    elif held_out % rows_per_batch and whole:
        log.info("pipeline-parallel evaluation uses %d of this rank's %d held-out rows (whole batches of %d)",
                 whole * rows_per_batch, held_out, rows_per_batch)
    return list(rows[: whole * rows_per_batch].split(rows_per_batch)) if whole else []
