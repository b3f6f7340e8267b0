"""The on-disk Loom checkpoint layout, readable and writable without a training run or a process group.

The launcher writes full training checkpoints in this layout and `model/hf.py` converts to and from it, so the
rules live in one place: a checkpoint is `<run_dir>/checkpoints/step_<N:08d>/` holding a
torch.distributed.checkpoint (DCP) save of a nested state dict whose "model" entry is the plain (unwrapped) model
state dict, a `model_config.json` (dataclasses.asdict of the ModelConfig), and a `COMPLETE` JSON marker written
last that lists every file with its size. Everything is written into a temporary sibling directory and renamed
into place, so a reader sees either a whole checkpoint or none; a directory without a valid marker is torn.

DCP rather than torch.save: it writes sharded tensors (FSDP/TP DTensors) from every rank in parallel and loads
them back onto a different layout, which a single pickled file cannot do.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from model.config import ModelConfig

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
MODEL_CONFIG_FILE = "model_config.json"
DCP_METADATA_FILE = ".metadata"
MODEL_KEY = "model"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, torn (no COMPLETE marker) or corrupt (files disagree with the marker)."""


def step_dir_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"step_{step:08d}"


def checkpoint_step(directory: str | os.PathLike) -> int:
    match = _STEP_DIR.match(Path(directory).name)
    if match is None:
        raise CheckpointError(f"{directory}: not a checkpoint directory name (expected step_<8 digits>)")
    return int(match.group(1))


def temporary_dir_for(final_dir: str | os.PathLike) -> Path:
    """The sibling directory a checkpoint is written into before the rename; hidden so listings skip it."""
    final_dir = Path(final_dir)
    return final_dir.with_name(f".tmp-{final_dir.name}")


@contextmanager
def single_process_dcp() -> Iterator[None]:
    """Silence DCP's 'assuming the intent is to save/load in a single process' warning where that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load) in a single process")
        yield


# ----------------------------------------------------------------------------------------------- model config


def model_config_to_dict(cfg: Any) -> dict[str, Any]:
    """The JSON-ready dict of a ModelConfig (or of a Hydra node / dict of one, normalised first)."""
    return dataclasses.asdict(ModelConfig.coerce(cfg))


def read_model_config(directory: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored with a checkpoint (a checkpoint dir, or a run dir: its newest complete checkpoint)."""
    ckpt = resolve_checkpoint_dir(directory)
    path = ckpt / MODEL_CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from exc
    try:
        return ModelConfig.coerce(data, source=str(path))
    except (TypeError, ValueError) as exc:  # unknown keys (a newer Loom?) or values this Loom refuses
        raise CheckpointError(f"{path}: {exc}") from exc


# ------------------------------------------------------------------------------------------ marker and verify


def _listed_files(directory: Path) -> dict[str, int]:
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_model_config(directory: str | os.PathLike, model_cfg: ModelConfig) -> None:
    _atomic_write_text(Path(directory) / MODEL_CONFIG_FILE, json.dumps(model_config_to_dict(model_cfg), indent=2))


def publish_checkpoint(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike, step: int) -> Path:
    """Write the COMPLETE marker into `tmp_dir` (after every other file) and rename it to `final_dir`.

    An existing `final_dir` (e.g. a torn checkpoint of the same step) is moved aside and deleted after the rename.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    marker = {"step": int(step), "time": time.time(), "files": _listed_files(tmp_dir)}
    _atomic_write_text(tmp_dir / COMPLETE_MARKER, json.dumps(marker, indent=2))
    stale = None
    if final_dir.exists():
        stale = final_dir.with_name(f".stale-{final_dir.name}-{os.getpid()}")
        os.replace(final_dir, stale)
    os.replace(tmp_dir, final_dir)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    return final_dir


def verify_checkpoint(directory: str | os.PathLike) -> None:
    """Raise CheckpointError naming the reason unless `directory` is a complete, self-consistent checkpoint."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    marker_path = directory / COMPLETE_MARKER
    if not marker_path.is_file():
        raise CheckpointError(f"{directory}: no {COMPLETE_MARKER} marker (torn checkpoint: the save did not finish)")
    try:
        marker = json.loads(marker_path.read_text())
        files = dict(marker["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{marker_path}: unreadable {COMPLETE_MARKER} marker ({exc})") from exc
    for name, size in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: file {name} listed in {COMPLETE_MARKER} is missing")
        if path.stat().st_size != int(size):
            raise CheckpointError(
                f"{directory}: file {name} is {path.stat().st_size} bytes, {COMPLETE_MARKER} says {size} (corrupt)"
            )
    if DCP_METADATA_FILE not in files:
        raise CheckpointError(f"{directory}: no DCP {DCP_METADATA_FILE} file")
    try:
        dcp.FileSystemReader(str(directory)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO failure means the metadata is unusable
        raise CheckpointError(f"{directory}: unreadable DCP metadata ({type(exc).__name__}: {exc})") from exc


def list_checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Every step_<N> directory under `<run_dir>/checkpoints`, complete or not, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)), key=checkpoint_step)


def find_complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first; torn or corrupt ones are skipped with a warning naming them."""
    complete = []
    for candidate in list_checkpoint_dirs(run_dir):
        try:
            verify_checkpoint(candidate)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", candidate, exc)
            continue
        complete.append(candidate)
    return complete


def resolve_checkpoint_dir(directory: str | os.PathLike) -> Path:
    """A checkpoint directory as given, or for a run directory its newest complete checkpoint."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint or run directory")
    if (directory / COMPLETE_MARKER).exists() or (directory / DCP_METADATA_FILE).exists():
        return directory
    if (directory / CHECKPOINTS_DIR).is_dir():
        complete = find_complete_checkpoints(directory)
        if not complete:
            raise CheckpointError(f"{directory}: run directory has no complete checkpoint under {CHECKPOINTS_DIR}/")
        return complete[-1]
    raise CheckpointError(
        f"{directory}: neither a checkpoint directory (with {COMPLETE_MARKER}) nor a run directory "
        f"(with {CHECKPOINTS_DIR}/)"
    )


# ------------------------------------------------------------------------------------------- model save/load


def save_model_checkpoint(
    model_state_dict: dict[str, torch.Tensor], model_cfg: ModelConfig, directory: str | os.PathLike, *, step: int = 0,
    add_files: Optional[Callable[[Path], Any]] = None,
) -> Path:
    """Write a model-only checkpoint (DCP {"model": state dict}, model_config.json, COMPLETE) atomically.

    `add_files(tmp_dir)` may put more files in before the marker lists them (an imported model's tokenizer).
    Single-process: runs without a process group even if one is initialised. Refuses to overwrite an existing
    complete checkpoint.
    """
    directory = Path(directory)
    if (directory / COMPLETE_MARKER).exists():
        raise CheckpointError(f"{directory}: a complete checkpoint is already there; choose another directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_dir_for(directory)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        state = {k: v.detach() for k, v in model_state_dict.items()}
        with single_process_dcp():
            dcp.save({MODEL_KEY: state}, checkpoint_id=str(tmp), no_dist=True)
        write_model_config(tmp, model_cfg)
        if add_files is not None:
            add_files(tmp)
        return publish_checkpoint(tmp, directory, step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_model_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Model weights (plain CPU tensors, unwrapped parameter names) and ModelConfig of a checkpoint or run dir."""
    ckpt = resolve_checkpoint_dir(directory)
    verify_checkpoint(ckpt)
    model_cfg = read_model_config(ckpt)
    metadata = dcp.FileSystemReader(str(ckpt)).read_metadata()
    prefix = MODEL_KEY + "."
    state: dict[str, torch.Tensor] = {}
    for key, meta in metadata.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata):
            state[key[len(prefix) :]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not state:
        raise CheckpointError(f"{ckpt}: checkpoint holds no model tensors")
    with single_process_dcp():
        dcp.load({MODEL_KEY: state}, checkpoint_id=str(ckpt), no_dist=True)
    return state, model_cfg
