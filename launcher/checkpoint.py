"""Full training checkpoints: save every N steps and at the end, resume exactly, start from another run's weights.

A checkpoint is one torch.distributed.checkpoint (DCP) save of {"model", "optimizer", "scheduler", "dataloader",
"rng", "train_state"} in the layout of model/checkpoint_io.py. Model and optimizer state go through
torch.distributed.checkpoint.state_dict (get/set_model_state_dict, get/set_optimizer_state_dict), which names
everything by the unwrapped model's parameter names whatever the wrapping (DDP, FSDP2, TP), so a checkpoint
reloads onto any other layout; every rank writes its own shards in parallel. RNG states are per rank (keyed by
rank); the data position is global, so it means the same thing on any number of data-parallel ranks.

Pipeline parallel (`PipelineCheckpointer`) checkpoints this rank's stage modules, one or several (interleaved and
V schedules), each with its own optimizer: a stage keeps the full model's parameter names and stages hold
disjoint parameters, so the per-stage model and optimizer state dicts merge into the same DCP files as any other
layout's (a run saved under pp with several stages per rank resumes under one process, and vice versa).

DeepSpeed ZeRO (`ZeroCheckpointer`) saves the full model weights under "model" in the same DCP layout (so HF
export, init_from and any other layout read them), and its optimizer state through DeepSpeed's own
save_checkpoint in the subdirectory `deepspeed/`: ZeRO optimizer state resumes exactly under the same ZeRO stage
and world size, and reshards only through DeepSpeed's own tools (e.g. its universal checkpoint conversion); a torch
layout resuming from it gets the weights, not the optimizer state.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from launcher.distributed import DistEnv, barrier, broadcast_object
from model.checkpoint_io import (
    CHECKPOINTS_DIR,
    MODEL_KEY,
    CheckpointError,
    checkpoint_step,
    find_complete_checkpoints,
    list_checkpoint_dirs,
    publish_checkpoint,
    resolve_checkpoint_dir,
    single_process_dcp,
    step_dir_name,
    temporary_dir_for,
    verify_checkpoint,
    write_model_config,
)

log = logging.getLogger(__name__)

# Optimizer state keyed by parameter name ("state.<fqn>.exp_avg", "param_groups.<fqn>.lr"), not by param-group
# index: pipeline stages hold different parameters, and an indexed "param_groups.0.params" list would collide
# between them in one DCP save. Named keys also load onto any other layout.
_FLAT_OPTIMIZER = StateDictOptions(flatten_optimizer_state_dict=True)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer:
    """Saves and restores the training state of one run directory."""

    def __init__(
        self,
        run_dir: Path,
        *,
        env: DistEnv,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        dataloader: Any,
        model_cfg: Any,
        config_yaml: str,
        keep: int,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINTS_DIR
        self.env = env
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dataloader = dataloader
        self.model_cfg = model_cfg
        self.config_yaml = config_yaml
        self.keep = keep
        self.last_saved_step: Optional[int] = None

    # ---------------------------------------------------------------------------------------------- save
    def _rng_key(self) -> str:
        return f"rank{self.env.rank}"

    def save(self, step: int) -> Path:
        final = self.root / step_dir_name(step)
        tmp = temporary_dir_for(final)
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        state = {
            **self._model_and_optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "dataloader": self.dataloader.state_dict(),
            "rng": {self._rng_key(): _rng_state(self.env.device)},
            "train_state": {"step": step, "world_size": self.env.world_size, "config_yaml": self.config_yaml},
        }
        with single_process_dcp():
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
        self._save_extra(tmp)
        if self.env.is_main:
            write_model_config(tmp, self.model_cfg)
            publish_checkpoint(tmp, final, step)
            self._prune()
            log.info("saved checkpoint %s", final)
        barrier()
        self.last_saved_step = step
        return final

    def _model_and_optimizer_state(self) -> dict[str, Any]:
        return {
            MODEL_KEY: get_model_state_dict(self.model),
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=_FLAT_OPTIMIZER),
        }

    def _save_extra(self, directory: Path) -> None:
        """State saved outside DCP, into the temporary checkpoint directory (every rank calls it)."""

    def _restore_model_and_optimizer(self, state: dict[str, Any], directory: Path) -> None:
        set_model_state_dict(self.model, state[MODEL_KEY])
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=_FLAT_OPTIMIZER)

    def _prune(self) -> None:
        for stale in self.root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep <= 0:
            return
        complete = find_complete_checkpoints(self.run_dir)
        for old in complete[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------- load
    def latest(self) -> Optional[Path]:
        """Newest complete checkpoint, decided on rank 0 (torn/corrupt ones skipped with a warning) and shared."""
        found = None
        if self.env.is_main:
            for candidate in list_checkpoint_dirs(self.run_dir):
                try:
                    verify_checkpoint(candidate)
                except CheckpointError as exc:
                    log.warning("refusing checkpoint %s: %s; falling back to an earlier one", candidate, exc)
                    continue
                found = str(candidate)
        found = broadcast_object(found)
        return Path(found) if found else None

    def resume(self, directory: Path) -> int:
        """Restore the whole training state from `directory`; returns the step it was saved at."""
        metadata = dcp.FileSystemReader(str(directory)).read_metadata()
        saved_keys = metadata.state_dict_metadata.keys()
        state: dict[str, Any] = {
            **self._model_and_optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "dataloader": self.dataloader.state_dict(),
            "train_state": {"step": 0},
        }
        has_rng = any(k.startswith(f"rng.{self._rng_key()}.") for k in saved_keys)
        if has_rng:
            state["rng"] = {self._rng_key(): _rng_state(self.env.device)}
        else:
            log.warning("%s has no RNG state for rank %d (saved on another world size): RNG continues from the seed",
                        directory, self.env.rank)
        with single_process_dcp():
            dcp.load(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
        self._restore_model_and_optimizer(state, directory)
        self.scheduler.load_state_dict(state["scheduler"])
        # The optimizer state carries the lr of the saved schedule; recompute it from this run's schedule so a
        # resumed run may change trainer.max_steps or the schedule (same schedule: the very same value). Pipeline
        # stages have one schedule per stage optimizer (launcher.engines.StageSchedulers).
        for scheduler in getattr(self.scheduler, "schedulers", [self.scheduler]):
            for group, base_lr, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                                  scheduler.lr_lambdas):
                group["lr"] = base_lr * multiplier(scheduler.last_epoch)
        self.dataloader.load_state_dict(state["dataloader"])
        if has_rng:
            _set_rng_state(state["rng"][self._rng_key()], self.env.device)
        step = int(state["train_state"]["step"])
        if step != checkpoint_step(directory):
            raise CheckpointError(f"{directory}: train_state.step={step} disagrees with the directory name")
        self.last_saved_step = step
        log.info("resumed from %s (step %d)", directory, step)
        return step

    def load_weights(self, source: str | Path) -> Path:
        """Model weights only (trainer.init_from): a checkpoint dir, or a run dir's newest complete checkpoint."""
        return load_model_weights(self.model, source)


def load_model_weights(model: nn.Module | list[nn.Module], source: str | Path) -> Path:
    """Load the "model" weights of a checkpoint (dir, or a run dir's newest complete one) into `model` (or into
    each of a list of pipeline stage modules), whatever its layout; returns the checkpoint directory."""
    modules = list(model) if isinstance(model, (list, tuple)) else [model]
    directory = resolve_checkpoint_dir(source)
    verify_checkpoint(directory)
    own = [get_model_state_dict(module) for module in modules]
    state = {MODEL_KEY: merge_disjoint(own, MODEL_KEY)}
    with single_process_dcp():
        dcp.load(state, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
    for module, keys in zip(modules, own):
        set_model_state_dict(module, {key: state[MODEL_KEY][key] for key in keys})
    log.info("initialised model weights from %s", directory)
    return directory


def merge_disjoint(state_dicts: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """One flat state dict from several modules' (pipeline stages hold disjoint parameters, named as in the full
    model); a name held twice would make one module's state overwrite another's, so it is an error."""
    if len(state_dicts) == 1:
        return state_dicts[0]
    merged: dict[str, Any] = {}
    for state in state_dicts:
        for key, value in state.items():
            if key in merged:
                raise CheckpointError(f"{what} key {key!r} is held by two pipeline stage modules of one rank")
            merged[key] = value
    return merged


class PipelineCheckpointer(Checkpointer):
    """Checkpoints of this rank's pipeline stage modules, each with its own optimizer (launcher.optim
    .StageOptimizers). Per-stage `get_model_state_dict` and flattened (name-keyed) `get_optimizer_state_dict` are
    merged into the "model" and "optimizer" entries every layout writes, and split back per stage on restore."""

    def __init__(self, run_dir: Path, *, stages: list[nn.Module], optimizers: Any, **kwargs: Any) -> None:
        super().__init__(run_dir, model=stages[0], optimizer=optimizers, **kwargs)
        self.stages = list(stages)
        self.stage_optimizers = list(optimizers.optimizers)
        if len(self.stages) != len(self.stage_optimizers):
            raise ValueError(f"{len(self.stages)} pipeline stage modules but {len(self.stage_optimizers)} optimizers")

    def _per_stage_state(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(get_model_state_dict(stage), get_optimizer_state_dict(stage, optimizer, options=_FLAT_OPTIMIZER))
                for stage, optimizer in zip(self.stages, self.stage_optimizers)]

    def _model_and_optimizer_state(self) -> dict[str, Any]:
        per_stage = self._per_stage_state()
        return {MODEL_KEY: merge_disjoint([model for model, _ in per_stage], MODEL_KEY),
                "optimizer": merge_disjoint([optim for _, optim in per_stage], "optimizer")}

    def _restore_model_and_optimizer(self, state: dict[str, Any], directory: Path) -> None:
        # Which loaded entries belong to which stage: the names of each stage's own state dicts.
        for (stage, optimizer), (model_keys, optim_keys) in zip(zip(self.stages, self.stage_optimizers),
                                                                 self._per_stage_state()):
            set_model_state_dict(stage, {key: state[MODEL_KEY][key] for key in model_keys})
            set_optimizer_state_dict(stage, optimizer, {key: state["optimizer"][key] for key in optim_keys},
                                     options=_FLAT_OPTIMIZER)

    def load_weights(self, source: str | Path) -> Path:
        return load_model_weights(self.stages, source)


class ZeroCheckpointer(Checkpointer):
    """Checkpoints of a DeepSpeed ZeRO engine: full weights in DCP under "model" (gathered from the ZeRO
    partitions, every rank taking part), optimizer and partitioned state through DeepSpeed in `deepspeed/`.
    Resume restores weights and optimizer from DeepSpeed's files (same ZeRO stage and world size only: DeepSpeed
    refuses another partitioning) and the rest (schedule, data position, RNG, step) from DCP."""

    SUBDIR = "deepspeed"
    TAG = "state"

    def __init__(self, run_dir: Path, *, engine: Any, scheduler: Any, **kwargs: Any) -> None:
        super().__init__(run_dir, model=engine, optimizer=engine.optimizer, scheduler=scheduler, **kwargs)
        self.engine = engine

    def _model_and_optimizer_state(self) -> dict[str, Any]:
        from parallel.zero import full_model_state_dict

        return {MODEL_KEY: full_model_state_dict(self.engine)}

    def _save_extra(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / self.SUBDIR), tag=self.TAG, save_latest=False)

    def _restore_model_and_optimizer(self, state: dict[str, Any], directory: Path) -> None:
        source = directory / self.SUBDIR
        if not (source / self.TAG).is_dir():
            raise CheckpointError(
                f"{directory}: no DeepSpeed state in {source} (saved by a torch layout?): ZeRO resumes only its own "
                f"checkpoints; start from its weights with trainer.init_from={directory} trainer.resume=never"
            )
        load_path, _ = self.engine.load_checkpoint(str(source), tag=self.TAG, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if load_path is None:
            raise CheckpointError(f"{source}: DeepSpeed could not load its checkpoint (tag {self.TAG!r})")

    def load_weights(self, source: str | Path) -> Path:
        raise CheckpointError("under DeepSpeed ZeRO, trainer.init_from is loaded into the plain model before the "
                              "engine is built (launcher.checkpoint.load_model_weights)")
