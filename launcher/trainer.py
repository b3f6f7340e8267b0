"""The training loop, meant to be read top to bottom in one sitting (nanoGPT's train.py is the model).

`train(plan)` runs a validated plan (launcher/validation.py): processes, run directory, data, the train module of
the layout, checkpoints, metrics, then the loop. The layout matters in one place only: `build_train_module` picks
the train module (launcher/train_modules/), which owns the model parts, optimizers, lr schedules, the step, the
held-out loss and the state to checkpoint. Everything else is a small module of its own (data, checkpoint,
metrics, distributed, preemption).

The host never waits for the device inside a step: loss and gradient norm stay device tensors, read only at log
steps; the batch is copied from pinned memory on CUDA; ranks agree to stop through an asynchronous CPU all-reduce
(launcher/preemption.py).
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from launcher.checkpoint import Checkpointer
from launcher.nonfinite import NonFiniteGuard
from launcher.data import copy_tokenizer, open_training_data
from launcher.distributed import (barrier, die_with_launcher, init_distributed, mean_over_ranks, shutdown,
                                  sum_over_ranks)
from launcher.metrics import ConsoleSink, JsonlSink, MetricsLogger, ProgressBarSink, SpeedMeter, WandbSink, write_plot
from launcher.preemption import StopAgreement
from launcher.stop_request import StopRequest
from launcher.train_modules import TrainModule, build_train_module
from launcher.validation import RunPlan
from model.checkpoint_io import atomic_write_text, list_checkpoint_dirs

log = logging.getLogger("launcher")


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch onto the device. On CUDA it is pinned first, so the copy is an asynchronous DMA queued behind
    the step's kernels (from pageable memory torch copies through a staging buffer, with the host taking part)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


@torch.no_grad()
def evaluate(module: TrainModule, batches: list[torch.Tensor], device: torch.device) -> tuple[float, float]:
    """Validation loss (token-weighted mean over all ranks' held-out batches) and perplexity. Ranks whose module
    computes no loss for a batch (pipeline stages before the last) add nothing, so every data-parallel rank's rows
    count once."""
    module.train(False)
    total = torch.zeros(2, device=device, dtype=torch.float64)
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        inputs, labels = batch[:, :-1], batch[:, 1:]
        loss = module.eval_loss(inputs, labels)
        if loss is not None:
            total[0] += loss.double() * labels.numel()
            total[1] += labels.numel()
    module.train(True)
    total = sum_over_ranks(total)
    val_loss = (total[0] / total[1]).item() if total[1] > 0 else math.nan
    return val_loss, math.exp(min(val_loss, 50.0))


@torch.no_grad()
def sample_text(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int, max_seq_len: int,
                eos_id: Optional[int]) -> str:
    """Greedy continuation of the prompt, decoded when the data comes with a tokenizer, else token ids. Every rank
    runs it (sharded layouts need all ranks in the forward); rank 0 logs it."""
    from model.generation import generate

    if tokenizer is not None:
        prompt_ids = tokenizer.encode(prompt).ids or [eos_id or 0]
    else:
        prompt_ids = [eos_id if eos_id is not None else 0]
    max_new_tokens = max(1, min(max_new_tokens, max_seq_len - len(prompt_ids)))
    stop_tokens = (eos_id,) if eos_id is not None else ()
    # Eager even under parallel.compile: every decode length would be a new graph for the compiled blocks, and
    # a short diagnostic sample is not worth compiling.
    with torch.compiler.set_stance("force_eager"):
        new_ids = generate(model, [prompt_ids], max_new_tokens, greedy=True, stop_tokens=stop_tokens)[0]
    model.train()
    if tokenizer is not None:
        return prompt + tokenizer.decode(new_ids)
    return " ".join(map(str, prompt_ids + list(new_ids)))


def train(plan: RunPlan, config: dict[str, Any], stop: Optional[StopRequest] = None) -> None:
    """Train `plan` (its `config`: the resolved config as plain data, saved with the run and its checkpoints).
    `stop`: the signal flag the entry point installed before its imports (else installed here)."""
    cfg, dims, t = plan.cfg, plan.dims, plan.cfg.trainer
    stop = stop or StopRequest().install()  # a SIGTERM from here on means "save and exit", never a lost run
    # ---- processes, mesh, run directory
    die_with_launcher()  # no orphan rank trains on after kill -9 of torchrun
    env = init_distributed(t.device, t.dist_timeout_s, one_rank_group=dims.needs_mesh)
    dims.build_mesh(env.device.type)
    run_dir = Path(t.run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"trainer.run_dir={run_dir}", flush=True)
    else:
        logging.getLogger().setLevel(logging.WARNING)

    # ---- data
    data = open_training_data(cfg.data, vocab_size=cfg.model.vocab_size, global_batch=plan.global_batch,
                              dp_rank=dims.dp_rank(), dp_degree=dims.dp_degree,
                              seed=cfg.data.seed if cfg.data.seed is not None else t.seed,
                              document_mask_eos_id=cfg.model.document_mask_eos_id)
    loader = data.batches

    # ---- the train module of this layout, resumed from the newest good checkpoint or started from init_from
    checkpointer = Checkpointer(run_dir, env, keep=t.keep_checkpoints)
    checkpointer.remove_stale_temporaries()
    if t.resume == "never":
        checkpointer.set_aside_old_run()
    fresh = not list_checkpoint_dirs(run_dir)
    module = build_train_module(plan, env, init_from=Path(t.init_from) if t.init_from and fresh else None)
    start_step = checkpointer.restore(module, loader, config, t.resume_allow)
    if env.is_main:  # only now: a run that cannot resume changes nothing in its run dir
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
        copy_tokenizer(cfg.data, run_dir)  # <run_dir>/tokenizer.json: what exports and model.generate read
    micro = t.micro_batch_size
    eval_batches = module.eval_batches(loader.eval_batches(t.eval_batches * micro, micro)) if t.eval_batches else []

    # ---- metrics (sinks only on rank 0)
    from model.counting import count_parameters, flops_per_token
    from model.peak_flops import peak_flops

    peak = peak_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
    speed = SpeedMeter(flops_per_token=flops_per_token(cfg.model, cfg.data.seq_len), peak_flops_per_device=peak,
                       world_size=env.world_size, device_type=env.device.type)
    sinks: list = []
    progress = None
    if env.is_main:
        sinks = [ConsoleSink(), JsonlSink(run_dir, start_step)]
        if cfg.logging.wandb.mode != "disabled":
            sinks.append(WandbSink(cfg.logging.wandb, run_dir, config, run_dir.name, resume_step=start_step))
        if t.progress_bar:
            progress = ProgressBarSink(t.max_steps, start_step)
    metrics = MetricsLogger(sinks, progress)
    log.info("model %s: %.2fM parameters | global batch %d x %d tokens, %s per rank, %d data-parallel rank(s) | "
             "steps %d -> %d", cfg.model.name, count_parameters(cfg.model) / 1e6, plan.global_batch,
             cfg.data.seq_len, module.batch_plan_text(), dims.dp_degree, start_step, t.max_steps)
    sampler, why_not = module.generation_model()
    if t.sample_every >= 0 and sampler is None:
        log.info(why_not)

    # ---- the loop
    module.train(True)
    step = start_step
    stop_agreement = StopAgreement(stop)  # every rank stops at the same step, without a host sync in the step
    guard = NonFiniteGuard(env.device, start_step, t.skip_nonfinite_steps)
    speed.reset()
    while step < t.max_steps:
        step += 1
        lr = module.lr
        batch = to_device(loader.next_batch(), env.device)
        out = module.train_step(batch[:, :-1], batch[:, 1:])
        guard.add(step, module.step_is_finite(out), out.skipped)
        speed.add_tokens(plan.tokens_per_step)
        metrics.advance(step)

        last = step == t.max_steps
        stopping = stop_agreement.poll()
        saving = stopping or last or (t.checkpoint_every > 0 and step % t.checkpoint_every == 0)
        logging_step = step % t.log_every == 0 or last
        if logging_step or saving:
            guard.check(step, checkpointer.last_saved_step)  # never log or save what a NaN produced
        record: dict[str, Any] = {}
        if logging_step:
            record = {"loss": mean_over_ranks(out.loss.float().reshape(1)).item(), "lr": lr,
                      "grad_norm": out.grad_norm.item(), **speed.measure()}
            record.update({name: mean_over_ranks(value.float().reshape(1)).item() for name, value in out.extra.items()})
            record.update(module.log_extras())
        # Evaluation, sampling and checkpoints stay out of the throughput figures.
        if eval_batches and ((t.eval_every > 0 and step % t.eval_every == 0) or last):
            with speed.paused():
                record["val_loss"], record["val_ppl"] = evaluate(module, eval_batches, env.device)
        if sampler is not None and t.sample_every >= 0 and (
                (t.sample_every > 0 and step % t.sample_every == 0) or (last and t.sample_tokens)):
            with speed.paused():
                record["sample"] = sample_text(sampler, data.tokenizer, t.sample_prompt, t.sample_tokens,
                                               cfg.model.max_seq_len, data.eos_id)
        if record:
            metrics.log(step, record)
        if saving:
            with speed.paused():
                checkpointer.save(step, module, loader, config)
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
