"""The training loop, meant to be read top to bottom in one sitting (nanoGPT's train.py is the model).

`train(plan)` runs a validated plan (launcher/validation.py): processes, run directory, data, the train module of
the layout (resumed from its newest good checkpoint), the callbacks, then the loop. The layout matters in one
place only: `build_train_module` picks the train module (launcher/train_modules/), which owns the model parts,
optimizers, lr schedules, the step, the held-out loss and the state to checkpoint. The loop's periodic work
(logged figures, held-out loss, text sample, checkpoints, loss spikes, layer health) is callbacks
(launcher/callbacks/), built from the config in one list; the loop trains and calls them at the end of every step
(and, when a loss spike asks for it, rolls back to the last checkpoint). Everything else is a small module of its own
(data, checkpoint, metrics, distributed, preemption, the peer watchdog).

The host never waits for the device inside a step: loss and gradient norm stay device tensors, read only at log
steps; the batch is copied from pinned memory on CUDA; ranks agree to stop through an asynchronous CPU all-reduce
(launcher/preemption.py). Two options read them every step by choice: trainer.skip_nonfinite_steps and
trainer.spike (launcher/spikes.py), which must judge a step before its update.
"""

from __future__ import annotations

import filecmp
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from launcher.callbacks import TrainContext, build_callbacks
from launcher.checkpoint import Checkpointer
from launcher.data import copy_tokenizer, inputs_and_labels, open_training_data, write_decontamination_record
from launcher.distributed import DistEnv, barrier, die_with_launcher, init_distributed, shutdown
from launcher.hf_init import hf_init_dir, hf_tokenizer
from launcher.metrics import SpeedMeter
from launcher.nonfinite import NonFiniteGuard
from launcher.preemption import StopAgreement
from launcher.stop_request import StopRequest
from launcher.train_modules import build_train_module
from launcher.validation import RunPlan, watchdog_timeouts
from launcher.watchdog import note_progress, watch_peers
from model.checkpoint_io import atomic_write_text, list_checkpoint_dirs
from model.hf.files import copy_tokenizer_files

log = logging.getLogger("launcher")


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch onto the device. On CUDA it is pinned first, so the copy is an asynchronous DMA queued behind
    the step's kernels (from pageable memory torch copies through a staging buffer, with the host taking part)."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)


def train(plan: RunPlan, config: dict[str, Any], stop: Optional[StopRequest] = None) -> None:
    """Train `plan` (its `config`: the resolved config as plain data, saved with the run and its checkpoints).
    `stop`: the signal flag the entry point installed before its imports (else installed here)."""
    dims, t = plan.dims, plan.cfg.trainer
    stop = stop or StopRequest().install()  # a SIGTERM from here on means "save and exit", never a lost run
    # ---- processes, mesh, run directory
    die_with_launcher()  # no orphan rank trains on after kill -9 of torchrun
    env = init_distributed(
        t.device, t.dist_timeout_s, one_rank_group=dims.needs_mesh, trace_dir=Path(t.run_dir) / "flight_recorder"
    )
    # A lost, stopped or stuck peer is named and the run exits, instead of waiting out dist_timeout_s in silence.
    with watch_peers(env.rank, env.world_size, *watchdog_timeouts(t)):
        _train(plan, config, stop, env)


def _train(plan: RunPlan, config: dict[str, Any], stop: StopRequest, env: DistEnv) -> None:
    cfg, dims, t = plan.cfg, plan.dims, plan.cfg.trainer
    dims.build_mesh(env.device.type)
    run_dir = Path(t.run_dir)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        print(f"trainer.run_dir={run_dir}", flush=True)
    else:
        logging.getLogger().setLevel(logging.WARNING)

    # ---- data
    data = open_training_data(
        cfg.data,
        vocab_size=cfg.model.vocab_size,
        global_batch=plan.global_batch,
        dp_rank=dims.dp_rank(),
        dp_degree=dims.dp_degree,
        seed=cfg.data.seed if cfg.data.seed is not None else t.seed,
        document_mask_eos_id=cfg.model.document_mask_eos_id,
        batch_schedule=plan.batch_schedule,
        skip_samples=cfg.data.skip_samples,
    )
    hf_dir = hf_init_dir(t.init_from)
    if data.tokenizer is None and hf_dir is not None:  # synthetic data: text samples and evaluation use the HF one
        data.tokenizer, data.eos_id = hf_tokenizer(hf_dir)
    loader = data.batches

    # ---- the train module of this layout, resumed from the newest good checkpoint or started from init_from
    checkpointer = Checkpointer(
        run_dir, env, keep=t.keep_checkpoints, async_save=t.checkpoint_async, timeout_s=t.dist_timeout_s
    )
    checkpointer.remove_stale_temporaries()
    if t.resume == "never":
        checkpointer.set_aside_old_run()
    fresh = not list_checkpoint_dirs(run_dir)
    module = build_train_module(plan, env, init_from=Path(t.init_from) if t.init_from and fresh else None)
    start_step = checkpointer.restore(module, loader, config, t.resume_allow)
    if env.is_main:  # only now: a run that cannot resume changes nothing in its run dir
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config))
        # <run_dir>/tokenizer.json: what exports and model.generate read (the data's, else init_from's HF one).
        # Data tokenized with init_from's own tokenizer (SFT, DPO) takes its HF files too: the chat template and
        # special tokens reach the export.
        copied = copy_tokenizer(cfg.data, run_dir)
        hf_json = Path(hf_dir) / "tokenizer.json" if hf_dir is not None else None
        if hf_dir is not None and (copied is None or hf_json.is_file() and filecmp.cmp(copied, hf_json, shallow=False)):
            copy_tokenizer_files(hf_dir, run_dir)
        write_decontamination_record(loader, run_dir)  # what evaluations of the run mark per task

    # ---- the periodic work: metrics, held-out loss, text sample, checkpoints (launcher/callbacks/)
    from model.counting import count_parameters, flops_per_token
    from model.peak_flops import peak_flops

    peak = peak_flops(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
    speed = SpeedMeter(
        flops_per_token=flops_per_token(cfg.model, cfg.data.seq_len),
        peak_flops_per_device=peak,
        world_size=env.world_size,
        device_type=env.device.type,
    )
    log.info(
        "model %s: %.2fM parameters | global batch %s x %d tokens, %s per rank, %d data-parallel rank(s) | "
        "steps %d -> %d",
        cfg.model.name,
        count_parameters(cfg.model) / 1e6,
        plan.batch_schedule.describe(),
        cfg.data.seq_len,
        module.batch_plan_text(),
        dims.dp_degree,
        start_step,
        t.max_steps,
    )
    guard = NonFiniteGuard(env.device, start_step, t.skip_nonfinite_steps)
    ctx = TrainContext(plan, config, env, run_dir, data, module, checkpointer, speed, guard, start_step)
    callbacks = build_callbacks(cfg)
    callbacks.train_start(ctx)

    # ---- the loop
    module.train(True)
    step = start_step
    stop_agreement = StopAgreement(stop)  # every rank stops at the same step, without a host sync in the step
    speed.reset()
    while step < t.max_steps:
        step += 1
        callbacks.step_start(ctx, step)  # e.g. per-layer health arms its probes on log steps
        lr = module.lr
        started = time.perf_counter()
        batch = to_device(loader.next_batch(), env.device)
        timing = (started, time.perf_counter())  # this rank's step and data times (stragglers)
        out = module.train_step(*inputs_and_labels(batch))
        guard.add(step, module.step_is_finite(out), out.skipped)
        speed.add_tokens(loader.global_batch * cfg.data.seq_len)  # the step's batch (trainer.batch_ramp)

        ctx.begin_step_end(step, lr, last=step == t.max_steps, stopping=stop_agreement.poll(), timing=timing)
        callbacks.step_end(ctx, step, out)  # figures into ctx.record; a checkpoint asked for
        if ctx.record:
            callbacks.log_metrics(ctx, step, ctx.record)
        if ctx.rollback is not None:  # a loss spike under trainer.spike.action=rollback (launcher/spikes.py)
            with ctx.paused():
                step = ctx.rollback()  # the last checkpoint's step: the loop goes on after it
            continue
        if ctx.save_requested:
            with ctx.paused():  # checkpoints stay out of the throughput figures
                callbacks.save(ctx, step)
        note_progress()  # the step is done: the hang watchdog's clock restarts
        if ctx.stopping:
            log.warning("stop requested (%s): saved step %d, exiting", stop.signal_name or "another rank", step)
            break

    if start_step >= t.max_steps:
        log.info("run already complete at step %d (trainer.max_steps=%d): nothing to do", start_step, t.max_steps)
    stop_agreement.close()
    callbacks.train_end(ctx)
    barrier()
    shutdown()
    sys.stdout.flush()
