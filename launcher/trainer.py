"""The training loop, meant to be read top to bottom in one sitting (nanoGPT's train.py is the model).

`train(cfg)` sets up processes, data, model, optimizer and checkpoints, then runs the loop. Everything that is
not the loop lives in a small module of its own (config, data, optim, schedule, checkpoint, metrics, distributed,
preemption); the parallel layout is `parallel.parallelize`'s business.

One micro batch's forward and backward is `forward_backward`, and `TorchStep` runs them and `optimizer_step` for
one global batch: pipeline parallelism and DeepSpeed ZeRO replace exactly that step with their own
(launcher/engines.py: `PipelineStep`, `ZeroStep`), nothing else. The host never waits for the device inside a
torch-layout step: the loss and gradient norm stay device tensors, read (`.item()`) only at log steps; the batch
is copied from pinned memory on CUDA; ranks agree to stop through an asynchronous CPU all-reduce
(launcher/preemption.py).
(fp16's GradScaler and DeepSpeed's reported grad norm read device values: their libraries' choice.)
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.nn.parallel import DistributedDataParallel

import model as model_lib
from launcher.checkpoint import Checkpointer, PipelineCheckpointer, ZeroCheckpointer, load_model_weights
from launcher.config import batch_plan, effective_parallel
from launcher.data import SyntheticBatches, TokenBatches, copy_tokenizer, open_training_data
from launcher.distributed import (DistEnv, barrier, init_distributed, init_one_rank_group, mean_over_ranks, shutdown,
                                  sum_over_ranks)
from launcher.engines import PipelineStep, StageSchedulers, ZeroStep, pipeline_eval_batches
from launcher.metrics import (
    ConsoleSink,
    JsonlSink,
    MetricsLogger,
    ProgressBarSink,
    SpeedMeter,
    WandbSink,
    write_plot,
)
from launcher.optim import StageOptimizers, build_optimizer
from launcher.preemption import StopAgreement, StopRequest
from launcher.schedule import build_scheduler
from parallel import ParallelDims, compute_loss, loss_context, parallelize
from parallel import clip_grad_norm_ as parallel_clip_grad_norm_
from parallel.pipeline import Pipeline

log = logging.getLogger("launcher")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepContext:
    """What a micro batch needs besides the model and the tokens."""

    dims: ParallelDims
    parallel_cfg: Any
    model_cfg: Any
    device: torch.device
    precision: str
    grad_accum: int
    scaler: Optional[torch.amp.GradScaler]
    mesh: Any = None  # the DeviceMesh (context parallel cuts sequences by it); None for one process

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])


def forward_backward(model: nn.Module, micro_batch: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """Forward and backward of one micro batch [B, seq_len + 1]; returns its (unscaled, detached) mean loss.

    The loss is divided by the accumulation steps so the summed gradient is the mean over the whole batch
    (data-parallel averaging then makes it the mean over the global batch).
    """
    inputs, labels = micro_batch[:, :-1], micro_batch[:, 1:]
    with loss_context(ctx.dims, ctx.parallel_cfg):
        with ctx.autocast():
            loss = compute_loss(model, inputs, labels, ctx.dims, ctx.parallel_cfg, ctx.model_cfg, mesh=ctx.mesh)
        scaled = loss / ctx.grad_accum
        if ctx.scaler is not None:
            scaled = ctx.scaler.scale(scaled)
        scaled.backward()
    loss = loss.detach()
    return loss.full_tensor() if hasattr(loss, "full_tensor") else loss  # a replicated DTensor under loss_parallel


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: StepContext,
                   grad_clip: float) -> torch.Tensor:
    """Clip by global norm (unscaling fp16 gradients first), step, zero the gradients; returns the grad norm."""
    if ctx.scaler is not None:
        ctx.scaler.unscale_(optimizer)
    max_norm = grad_clip if grad_clip > 0 else math.inf
    # parallel's clip, not torch's: torch's stacks every norm into one tensor, which fails when gradients live on
    # several meshes or mix plain tensors and DTensors (expert parallel, TP without SP). No host sync.
    grad_norm = parallel_clip_grad_norm_(model.parameters(), max_norm)
    if ctx.scaler is not None:
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()


class TorchStep:
    """One optimizer step of the torch layouts: the micro batches through `forward_backward` (DDP syncing only on
    the last), then `optimizer_step` and the lr schedule. Returns (this rank's mean loss, grad norm)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ctx: StepContext,
                 micro_batch_size: int, grad_clip: float) -> None:
        self.model, self.optimizer, self.scheduler, self.ctx = model, optimizer, scheduler, ctx
        self.micro_batch_size, self.grad_clip = micro_batch_size, grad_clip

    def train_step(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        micro_batches = batch.split(self.micro_batch_size)
        loss_sum = torch.zeros((), device=batch.device)
        for i, micro_batch in enumerate(micro_batches):
            with gradient_sync(self.model, enabled=i == len(micro_batches) - 1):
                loss_sum += forward_backward(self.model, micro_batch, self.ctx)
        grad_norm = optimizer_step(self.model, self.optimizer, self.ctx, self.grad_clip)
        self.scheduler.step()
        return loss_sum / len(micro_batches), grad_norm


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch onto the device. On CUDA it is pinned first, so the copy is an asynchronous DMA queued behind
    the step's kernels (from pageable memory torch copies through a staging buffer, with the host taking part)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def gradient_sync(model: nn.Module, enabled: bool):
    """DDP all-reduces gradients on every backward unless told not to: only the last micro batch syncs."""
    if not enabled and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: Any, batches: list[torch.Tensor], ctx: StepContext) -> tuple[float, float]:
    """Validation loss (token-weighted mean over all ranks' held-out batches) and perplexity.

    Under pipeline parallel `model` is the Pipeline: each batch goes through its schedule's forward-only pass
    (`Pipeline.eval_loss`) and only last-stage ranks get a loss; the others add nothing, so the sum over all ranks
    still weights every data-parallel rank's rows once."""
    if isinstance(model, Pipeline):
        batch_loss = model.eval_loss
    else:
        def batch_loss(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            loss = compute_loss(model, inputs, labels, ctx.dims, ctx.parallel_cfg, ctx.model_cfg, mesh=ctx.mesh)
            return loss.full_tensor() if hasattr(loss, "full_tensor") else loss
    model.eval()
    total = torch.zeros(2, device=ctx.device, dtype=torch.float64)
    for batch in batches:
        batch = batch.to(ctx.device, non_blocking=True)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        with loss_context(ctx.dims, ctx.parallel_cfg), ctx.autocast():
            loss = batch_loss(inputs, labels)
        if loss is not None:
            total[0] += loss.double() * labels.numel()
            total[1] += labels.numel()
    model.train()
    total = sum_over_ranks(total)
    val_loss = (total[0] / total[1]).item() if total[1] > 0 else math.nan
    return val_loss, math.exp(min(val_loss, 50.0))


@torch.no_grad()
def sample_text(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int, max_seq_len: int,
                eos_id: Optional[int]) -> str:
    """Greedy continuation of the prompt, decoded when the shards come with a tokenizer.json, else token ids.
    Every rank runs it (sharded layouts need all ranks in the forward); rank 0 logs it."""
    from model.generate import generate

    module = getattr(model, "module", model)  # under DDP or a DeepSpeed engine
    if tokenizer is not None:
        prompt_ids = tokenizer.encode(prompt).ids or [eos_id or 0]
    else:
        prompt_ids = [eos_id if eos_id is not None else 0]
    max_new_tokens = max(1, min(max_new_tokens, max_seq_len - len(prompt_ids)))
    stop_tokens = (eos_id,) if eos_id is not None else ()
    # Eager even under parallel.compile: every decode length would be a new graph for the compiled blocks, and
    # a short diagnostic sample is not worth compiling.
    with torch.compiler.set_stance("force_eager"):
        new_ids = generate(module, [prompt_ids], max_new_tokens, greedy=True, stop_tokens=stop_tokens)[0]
    module.train()
    if tokenizer is not None:
        return prompt + tokenizer.decode(new_ids)
    return " ".join(map(str, prompt_ids + list(new_ids)))


def build_model(cfg: Any, dims: ParallelDims, env: DistEnv):
    """Plain model, laid out by `parallelize`. Returns (model, device mesh or None); with pp > 1 the "model" is
    parallel.pipeline's `Pipeline` (schedule + this rank's stage modules).

    Unsharded layouts (single, DDP, DeepSpeed ZeRO, which partitions by itself) build and initialise the model in
    place from the seed. Sharded ones (FSDP, TP, CP, EP, PP) build on the meta device and materialise only their
    shards; their weights are then the single-process run's: rank 0 initialises the full model on CPU from the
    same seed and `set_model_state_dict(broadcast_from_rank0=True)` scatters it into every rank's shards (a
    sharded random init would give other weights on every layout). That costs one full fp32 copy of the model in
    rank 0's host memory at start-up."""
    torch.manual_seed(cfg.trainer.seed)
    parallel_cfg = effective_parallel(cfg.parallel, env.world_size)
    model_cfg = _model_config(cfg)
    mesh = dims.build_mesh(env.device.type)
    sharded = dims.fsdp_enabled or dims.tp > 1 or dims.cp > 1 or dims.ep > 1 or dims.pp > 1
    if not sharded or parallel_cfg.engine == "deepspeed":
        with torch.device(env.device):
            model = model_lib.build(model_cfg)
        model.init_weights()
        return parallelize(model, dims, parallel_cfg, model_cfg=model_cfg, mesh=mesh), mesh

    with torch.device("meta"):
        model = model_lib.build(model_cfg)
    model = parallelize(model, dims, parallel_cfg, model_cfg=model_cfg, mesh=mesh)
    full = None
    if env.is_main:
        torch.manual_seed(cfg.trainer.seed)
        with torch.device("cpu"):
            reference = model_lib.build(model_cfg)
        reference.init_weights()
        full = reference.state_dict()
    modules = model.stages if dims.pp > 1 else [model]
    for module in modules:
        module.to_empty(device=env.device)
        with torch.no_grad():
            (module.module if hasattr(module, "module") else module).init_weights()  # buffers (RoPE tables)
        # A copy per stage: set_model_state_dict writes the module's own (sharded) tensors back into the dict it
        # is given, and rank 0 would then broadcast those, not the full ones, to the next stage.
        set_model_state_dict(module, dict(full) if full is not None else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                      strict=dims.pp == 1))
    return model, mesh


def build_training_step(cfg: Any, model: Any, ctx: StepContext, env: DistEnv,
                        loader: Union[TokenBatches, SyntheticBatches], config_yaml: str):
    """The optimizer, lr schedule, step and checkpointer of this layout: DeepSpeed's engine for ZeRO, the pipeline
    schedule for pp > 1 (one AdamW and lr schedule per stage module of this rank), else torch's AdamW around
    `forward_backward`. Returns (what is trained, evaluated and checkpointed: the module, DeepSpeed's engine or the
    Pipeline; the step; the checkpointer)."""
    t, dims, parallel_cfg = cfg.trainer, ctx.dims, ctx.parallel_cfg
    checkpoint_args = dict(env=env, dataloader=loader, model_cfg=ctx.model_cfg, config_yaml=config_yaml,
                           keep=t.keep_checkpoints)
    if parallel_cfg.engine == "deepspeed":
        if t.init_from:  # into the plain model, before DeepSpeed copies it into its partitions (a resume overrides)
            load_model_weights(model, t.init_from)
        step = ZeroStep(model, cfg, dims, parallel_cfg, grad_accum=ctx.grad_accum, device=env.device)
        return step.engine, step, ZeroCheckpointer(Path(t.run_dir), engine=step.engine, scheduler=step.scheduler,
                                                   **checkpoint_args)
    if dims.pp > 1:  # stages keep the full model's names: per-stage state merges into layout-free checkpoints
        optimizers = StageOptimizers(model.stages, cfg.optim, env.device.type)
        schedulers = StageSchedulers(optimizers, cfg.schedule, t.max_steps)
        step = PipelineStep(model, optimizers, schedulers, dims, parallel_cfg, ctx.mesh, precision=t.precision,
                            device=env.device, grad_clip=cfg.optim.grad_clip)
        return model, step, PipelineCheckpointer(Path(t.run_dir), stages=model.stages, optimizers=optimizers,
                                                 scheduler=schedulers, **checkpoint_args)
    optimizer = build_optimizer(model, cfg.optim, env.device.type)
    scheduler = build_scheduler(optimizer, cfg.schedule, t.max_steps)
    step = TorchStep(model, optimizer, scheduler, ctx, t.micro_batch_size, cfg.optim.grad_clip)
    return model, step, Checkpointer(Path(t.run_dir), model=model, optimizer=optimizer, scheduler=scheduler,
                                     **checkpoint_args)


def _model_config(cfg: Any):
    return OmegaConf.to_object(cfg.model) if OmegaConf.is_config(cfg.model) else cfg.model


def train(cfg: DictConfig) -> None:
    t = cfg.trainer
    stop = StopRequest().install()  # first: a SIGTERM from here on means "save and exit", never a lost run
    # ---- processes, run directory, logging
    env = init_distributed(t.device, t.dist_timeout_s)
    run_dir = Path(t.run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"trainer.run_dir={run_dir}", flush=True)
    else:
        logging.getLogger().setLevel(logging.WARNING)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if env.is_main:
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(config_yaml)
        tmp.replace(run_dir / "config.yaml")
        copy_tokenizer(cfg.data, run_dir)  # <run_dir>/tokenizer.json: what exports and model.generate read
    model_cfg = _model_config(cfg)

    # ---- layout and batch plan
    parallel_cfg = effective_parallel(cfg.parallel, env.world_size)
    dims = ParallelDims.from_config(parallel_cfg, env.world_size, model_cfg=model_cfg, seq_len=cfg.data.seq_len)
    if dims.needs_mesh and not env.distributed:
        init_one_rank_group(env, t.dist_timeout_s)  # FSDP on one device
    global_batch, grad_accum = batch_plan(cfg, dims.dp_degree)
    seq_len, micro = cfg.data.seq_len, t.micro_batch_size

    # ---- data
    model, mesh = build_model(cfg, dims, env)
    data = open_training_data(cfg.data, vocab_size=model_cfg.vocab_size, global_batch=global_batch,
                              dp_rank=dims.dp_rank(mesh), dp_degree=dims.dp_degree,
                              seed=cfg.data.seed if cfg.data.seed is not None else t.seed)
    loader = data.batches
    eval_batches = loader.eval_batches(t.eval_batches * micro, micro) if t.eval_batches > 0 else []

    # ---- the training step of this layout (optimizer, schedule, precision) and its checkpoints
    scaler = torch.amp.GradScaler(env.device.type) if t.precision == "fp16" and parallel_cfg.engine == "torch" else None
    ctx = StepContext(dims, parallel_cfg, model_cfg, env.device, t.precision, grad_accum, scaler, mesh)
    model, layout_step, checkpointer = build_training_step(cfg, model, ctx, env, loader, config_yaml)
    scheduler = layout_step.scheduler
    if dims.pp > 1 and eval_batches:  # whole per-rank batches, the shape the pipeline stages were built for
        eval_batches = pipeline_eval_batches(eval_batches, global_batch // dims.dp_degree, global_batch, micro)

    # ---- checkpoints: resume, or start from another run's weights
    start_step = 0
    latest = checkpointer.latest() if t.resume == "auto" else None
    if latest is not None:
        start_step = checkpointer.resume(latest)
    elif t.init_from and parallel_cfg.engine != "deepspeed":
        checkpointer.load_weights(t.init_from)

    # ---- metrics (sinks only on rank 0)
    from model.estimate import count_parameters, flops_per_token, peak_flops

    peak = peak_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
    speed = SpeedMeter(flops_per_token=flops_per_token(model_cfg, seq_len), peak_flops_per_device=peak,
                       world_size=env.world_size, device_type=env.device.type)
    sinks: list = []
    progress = None
    if env.is_main:
        sinks = [ConsoleSink(), JsonlSink(run_dir, start_step)]
        if cfg.logging.wandb.mode != "disabled":
            sinks.append(WandbSink(cfg.logging.wandb, run_dir, OmegaConf.to_container(cfg, resolve=True),
                                   run_dir.name))
        if t.progress_bar:
            progress = ProgressBarSink(t.max_steps, start_step)
    metrics = MetricsLogger(sinks, progress)
    per_rank = global_batch // dims.dp_degree
    if dims.pp > 1:  # the schedule cuts each rank's batch into its own microbatches
        n_micro = parallel_cfg.pp_microbatches
        micro_plan = f"{n_micro} pipeline microbatches of {per_rank // n_micro}"
    else:
        micro_plan = f"{grad_accum} micro batch(es) of {micro}"
    log.info("model %s: %.2fM parameters | global batch %d x %d tokens, %s per rank, %d data-parallel rank(s) | "
             "steps %d -> %d", model_cfg.name, count_parameters(model_cfg) / 1e6, global_batch, seq_len, micro_plan,
             dims.dp_degree, start_step, t.max_steps)

    # Generation runs the model one token at a time, which sequence-sharded (TP+SP, CP) layouts cannot do.
    # Pipeline stages hold part of the model each.
    can_sample = t.sample_every >= 0 and dims.tp == 1 and dims.cp == 1 and dims.pp == 1
    if t.sample_every >= 0 and not can_sample:
        log.info("sample generation is skipped under tensor/context/pipeline parallel (parallel.tp/cp/pp > 1)")

    # ---- the loop
    model.train()
    step = start_step
    stop_agreement = StopAgreement(stop)  # every rank stops at the same step, without a host sync in the step
    speed.reset()
    while step < t.max_steps:
        step += 1
        lr = scheduler.get_last_lr()[0]
        loss, grad_norm = layout_step.train_step(to_device(loader.next_batch(), env.device))
        speed.add_tokens(global_batch * seq_len)
        metrics.advance(step)

        last = step == t.max_steps
        record: dict[str, Any] = {}
        if step % t.log_every == 0 or last:
            record = {"loss": mean_over_ranks(loss.float().reshape(1)).item(), "lr": lr,
                      "grad_norm": grad_norm.item(), **speed.measure()}
            if scaler is not None:
                record["loss_scale"] = scaler.get_scale()
        if eval_batches and ((t.eval_every > 0 and step % t.eval_every == 0) or last):
            record["val_loss"], record["val_ppl"] = evaluate(model, eval_batches, ctx)
        if can_sample and ((t.sample_every > 0 and step % t.sample_every == 0) or (last and t.sample_tokens)):
            record["sample"] = sample_text(model, data.tokenizer, t.sample_prompt, t.sample_tokens,
                                           model_cfg.max_seq_len, data.eos_id)
        if record:
            metrics.log(step, record)
        if "loss" in record:
            speed.reset()  # keep evaluation and sampling time out of the next throughput window

        stopping = stop_agreement.poll()
        if stopping or last or (t.checkpoint_every > 0 and step % t.checkpoint_every == 0):
            checkpointer.save(step)
        if stopping:
            log.warning("stop requested (%s): saved step %d, exiting", stop.signal_name or "another rank", step)
            break

    if start_step >= t.max_steps:
        log.info("run already complete at step %d (trainer.max_steps=%d): nothing to do", start_step, t.max_steps)
    stop_agreement.close()
    metrics.close()
    if env.is_main and cfg.logging.plot:
        plot = write_plot(run_dir)
        if plot is not None:
            log.info("wrote %s", plot)
    barrier()
    shutdown()
    sys.stdout.flush()

