"""Training checkpoints for every layout: save every N steps and at the end, resume exactly, start from weights.

One `Checkpointer` serves every train module: it asks the module for its state (`TrainModule.state_dict`) and
gives it back (`load_state_dict`), so it never knows the layout. The directory format, its verification and its
atomic publish are model/checkpoint_io.py (one definition, which `python -m model.hf` reads too without importing
the launcher). A checkpoint `<run_dir>/checkpoints/step_<N:08d>/` holds:
- a torch.distributed.checkpoint (DCP) save of the tensors: "model" (weights by unwrapped parameter name) and
  "optimizer" (moments and step counts by parameter name). Through DCP and torch.distributed.checkpoint
  .state_dict every rank writes its own shards in parallel, and a checkpoint reloads onto any other layout;
- `train_state.json` (rank 0): the step, world size, lr-schedule position, data position and the resolved config;
- `rng_rank<r>.json`: each rank's Python, NumPy and torch RNG states (a resume on another world size continues
  the RNG from the seed on ranks that had none);
- whatever the module keeps natively (DeepSpeed's partitioned state in deepspeed/);
- model_config.json and, written last, the COMPLETE marker.
Non-tensor state is JSON, never pickled.
"""
from __future__ import annotations

import json
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
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from launcher.distributed import DistEnv, barrier, broadcast_object
from launcher.optim import merge_disjoint
from model.checkpoint_io import (
    CHECKPOINTS_DIR,
    MODEL_KEY,
    CheckpointError,
    atomic_write_text,
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

TRAIN_STATE_FILE = "train_state.json"
_TENSOR_KEYS = (MODEL_KEY, "optimizer")


def _rng_state(device: torch.device) -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt_state), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state().tolist()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


class Checkpointer:
    """Saves and restores the training state of one run directory, whatever the train module."""

    def __init__(self, run_dir: Path, env: DistEnv, keep: int) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINTS_DIR
        self.env = env
        self.keep = keep
        self.last_saved_step: Optional[int] = None

    def _rng_file(self, directory: Path) -> Path:
        return directory / f"rng_rank{self.env.rank}.json"

    # ---------------------------------------------------------------------------------------------- save
    def save(self, step: int, module: Any, loader: Any, config: dict[str, Any]) -> Path:
        final = self.root / step_dir_name(step)
        tmp = temporary_dir_for(final)
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        state = module.state_dict()
        with single_process_dcp():
            dcp.save({key: state[key] for key in _TENSOR_KEYS}, checkpoint_id=str(tmp),
                     no_dist=not dist.is_initialized())
        module.save_native(tmp)
        atomic_write_text(self._rng_file(tmp), json.dumps(_rng_state(self.env.device)))
        if self.env.is_main:
            train_state = {"step": step, "world_size": self.env.world_size, "schedule": state["schedule"],
                           "dataloader": loader.state_dict(), "config": config}
            atomic_write_text(tmp / TRAIN_STATE_FILE, json.dumps(train_state, indent=1))
        barrier()  # every rank's files are in before the marker lists them
        if self.env.is_main:
            write_model_config(tmp, module.cfg.model)
            publish_checkpoint(tmp, final, step)
            self._prune()
            log.info("saved checkpoint %s", final)
        barrier()
        self.last_saved_step = step
        return final

    def _prune(self) -> None:
        for stale in self.root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self.keep <= 0:
            return
        for old in find_complete_checkpoints(self.run_dir)[: -self.keep]:
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

    def resume(self, directory: Path, module: Any, loader: Any) -> int:
        """Restore the module, the data position and this rank's RNG from `directory`; returns its step."""
        train_state = read_train_state(directory)
        state = module.state_dict()
        tensors = {key: state[key] for key in _TENSOR_KEYS}
        with single_process_dcp():
            dcp.load(tensors, checkpoint_id=str(directory), no_dist=not dist.is_initialized())
        module.load_state_dict({**tensors, "schedule": train_state["schedule"]}, directory)
        loader.load_state_dict(train_state["dataloader"])
        rng_file = self._rng_file(directory)
        if rng_file.is_file():
            _set_rng_state(json.loads(rng_file.read_text()), self.env.device)
        else:
            log.warning("%s has no RNG state for rank %d (saved on %d ranks): RNG continues from the seed",
                        directory, self.env.rank, train_state["world_size"])
        step = int(train_state["step"])
        if step != checkpoint_step(directory):
            raise CheckpointError(f"{directory}: {TRAIN_STATE_FILE} step={step} disagrees with the directory name")
        self.last_saved_step = step
        log.info("resumed from %s (step %d)", directory, step)
        return step


def read_train_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / TRAIN_STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from exc


def load_model_weights(modules: list[nn.Module], source: str | Path) -> Path:
    """The "model" weights of a checkpoint (a checkpoint dir, or a run dir's newest complete one) into `modules`
    (one model, or a pipeline rank's stage modules), whatever their layout; returns the checkpoint directory."""
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
