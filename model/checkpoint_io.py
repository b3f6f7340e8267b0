"""The on-disk Loom checkpoint layout, readable and writable without a training run or a process group.

The launcher writes full training checkpoints in this layout and `model/hf.py` converts to and from it, so the
rules live in one place: a checkpoint is `<run_dir>/checkpoints/step_<N:08d>/` holding a
torch.distributed.checkpoint (DCP) save of a nested state dict whose "model" entry is the plain (unwrapped) model
state dict, a `model_config.json` (dataclasses.asdict of the ModelConfig), and a `COMPLETE` manifest written
last that lists every file with its size and SHA-256. Everything is written into a temporary sibling directory and
renamed into place, so a reader sees either a whole checkpoint or none; a directory without a valid marker is torn.

Checkpoints are untrusted input. Before one byte of a checkpoint is deserialised, the manifest must list exactly
the files present, with their sizes and checksums (`verify_checkpoint`). DCP's `.metadata` is a pickle: it is read
through an unpickler that builds only DCP's own metadata classes (`read_dcp_metadata`), and DCP loads go through
`SafeReader`, which reads tensors with `torch.load(weights_only=True)` (as DCP does) and refuses non-tensor
(pickled) entries outright. Training state that is not a tensor is JSON (launcher/checkpoint.py).

DCP rather than torch.save: it writes sharded tensors (FSDP/TP DTensors) from every rank in parallel and loads
them back onto a different layout, which a single pickled file cannot do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType

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


# ------------------------------------------------------------------------------------------ manifest and verify
MANIFEST_FORMAT = 2  # 1: sizes only (before checksums); 2: size and SHA-256 of every file


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_model_config(directory: str | os.PathLike, model_cfg: ModelConfig) -> None:
    atomic_write_text(Path(directory) / MODEL_CONFIG_FILE, json.dumps(model_config_to_dict(model_cfg), indent=2))


def checkpoint_files(directory: str | os.PathLike) -> list[str]:
    """Every file of a checkpoint directory (relative POSIX paths, sorted), the manifest itself excepted."""
    directory = Path(directory)
    return sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER
    )


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_files(directory: str | os.PathLike, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"size", "sha256"}} of the given files (the manifest's entries)."""
    directory = Path(directory)
    return {
        name: {"size": (directory / name).stat().st_size, "sha256": file_sha256(directory / name)} for name in names
    }


def publish_checkpoint(
    tmp_dir: str | os.PathLike, final_dir: str | os.PathLike, step: int, files: dict[str, dict[str, Any]] | None = None
) -> Path:
    """Write the COMPLETE manifest into `tmp_dir` (after every other file) and rename it to `final_dir`.

    `files` are the manifest entries when the caller already hashed the files (in parallel, on every rank);
    otherwise they are computed here. An existing `final_dir` (e.g. a torn checkpoint of the same step) is moved
    aside and deleted after the rename."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    present = checkpoint_files(tmp_dir)
    if files is None:
        files = describe_files(tmp_dir, present)
    if sorted(files) != present:
        raise CheckpointError(f"{tmp_dir}: manifest entries {sorted(files)} are not the files written {present}")
    marker = {"format": MANIFEST_FORMAT, "step": int(step), "time": time.time(), "files": files}
    atomic_write_text(tmp_dir / COMPLETE_MARKER, json.dumps(marker, indent=1))
    stale = None
    if final_dir.exists():
        stale = final_dir.with_name(f".stale-{final_dir.name}-{os.getpid()}")
        os.replace(final_dir, stale)
    os.replace(tmp_dir, final_dir)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    return final_dir


def read_manifest(directory: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The manifest's {name: {"size", "sha256" (None in a format-1 marker)}}; CheckpointError if unreadable."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    marker_path = directory / COMPLETE_MARKER
    if not marker_path.is_file():
        raise CheckpointError(f"{directory}: no {COMPLETE_MARKER} marker (torn checkpoint: the save did not finish)")
    try:
        marker = json.loads(marker_path.read_text())
        files = {}
        for name, entry in dict(marker["files"]).items():
            if isinstance(entry, dict):
                files[str(name)] = {"size": int(entry["size"]), "sha256": str(entry["sha256"])}
            else:  # format 1: the size alone
                files[str(name)] = {"size": int(entry), "sha256": None}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{marker_path}: unreadable {COMPLETE_MARKER} marker ({exc})") from exc
    return files


def verify_checkpoint(directory: str | os.PathLike, *, part: tuple[int, int] = (0, 1), metadata: bool = True) -> None:
    """Raise CheckpointError naming the reason unless `directory` is a complete checkpoint whose files are exactly
    those its manifest lists, with their sizes and SHA-256 checksums.

    `part=(i, n)` checksums only every n-th file from the i-th (the ranks of a job share the reading); sizes and
    the file list are always checked whole. `metadata` also parses DCP's metadata (restricted unpickler)."""
    directory = Path(directory)
    files = read_manifest(directory)
    present = set(checkpoint_files(directory))
    missing, unlisted = sorted(set(files) - present), sorted(present - set(files))
    if missing:
        raise CheckpointError(f"{directory}: files listed in {COMPLETE_MARKER} are missing: {missing}")
    if unlisted:
        raise CheckpointError(
            f"{directory}: files not listed in {COMPLETE_MARKER}: {unlisted} (the manifest is "
            f"incomplete or the directory was changed after the save)"
        )
    if DCP_METADATA_FILE not in files:
        raise CheckpointError(f"{directory}: no DCP {DCP_METADATA_FILE} file")
    for name, entry in files.items():
        size = (directory / name).stat().st_size
        if size != entry["size"]:
            raise CheckpointError(
                f"{directory}: file {name} is {size} bytes, {COMPLETE_MARKER} says {entry['size']} (corrupt)"
            )
    index, count = part
    unchecked = [name for name, entry in files.items() if entry["sha256"] is None]
    if unchecked and index == 0:
        log.warning("%s: manifest without checksums (written by an older Loom): sizes checked only", directory)
    for name in sorted(files)[index::count]:
        expected = files[name]["sha256"]
        if expected is not None and file_sha256(directory / name) != expected:
            raise CheckpointError(f"{directory}: file {name} does not match its SHA-256 in {COMPLETE_MARKER} (corrupt)")
    if metadata:
        read_dcp_metadata(directory)


# DCP's metadata pickle may name only these (and torch dtypes): a crafted checkpoint cannot make it build anything
# else, so unpickling it runs no code of the checkpoint's choosing.
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a DCP metadata class")


def read_dcp_metadata(directory: str | os.PathLike) -> Metadata:
    """DCP's `.metadata` of a checkpoint, unpickled by the restricted unpickler; CheckpointError otherwise."""
    path = Path(directory) / DCP_METADATA_FILE
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except Exception as exc:  # noqa: BLE001 - any unpickling/IO failure means the metadata is unusable
        raise CheckpointError(f"{path}: unreadable DCP metadata ({type(exc).__name__}: {exc})") from exc
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: not DCP metadata (a {type(metadata).__name__})")
    return metadata


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader with the restricted metadata unpickler, refusing every non-tensor (pickled) entry."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError("per-rank DCP metadata files are not used by Loom checkpoints")
        metadata = read_dcp_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan, planner):
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                raise CheckpointError(
                    f"{self.path}: entry {item.dest_index.fqn!r} is a pickled object, not a tensor: "
                    f"refusing to unpickle it"
                )
        return super().read_data(plan, planner)


def load_tensors(state: dict[str, Any], directory: str | os.PathLike, *, no_dist: bool) -> None:
    """dcp.load of the tensors of `state` (in place) from a verified checkpoint, through SafeReader."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with single_process_dcp():
            dcp.load(state, storage_reader=SafeReader(str(directory)), no_dist=no_dist)
    except CheckpointException as exc:  # DCP's per-rank failures (a BaseException): the first one says why
        first = next(iter(exc.failures.values()))[0]
        raise CheckpointError(
            str(first)
            if isinstance(first, CheckpointError)
            else f"{directory}: loading failed ({type(first).__name__}: {first})"
        ) from exc


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
    """A checkpoint directory as given, or for a run directory its newest checkpoint that verifies."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint or run directory")
    if (directory / COMPLETE_MARKER).exists() or (directory / DCP_METADATA_FILE).exists():
        return directory  # verify_checkpoint then says what is wrong with it, if anything
    if (directory / CHECKPOINTS_DIR).is_dir():
        for candidate in reversed(list_checkpoint_dirs(directory)):
            try:
                verify_checkpoint(candidate)
            except CheckpointError as exc:
                log.warning("skipping checkpoint %s: %s", candidate, exc)
                continue
            return candidate
        raise CheckpointError(f"{directory}: run directory has no checkpoint that verifies under {CHECKPOINTS_DIR}/")
    raise CheckpointError(
        f"{directory}: neither a checkpoint directory (with {COMPLETE_MARKER}) nor a run directory "
        f"(with {CHECKPOINTS_DIR}/)"
    )


# ------------------------------------------------------------------------------------------- model save/load


def save_model_checkpoint(
    model_state_dict: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    directory: str | os.PathLike,
    *,
    step: int = 0,
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
    """Model weights (plain CPU tensors, unwrapped parameter names) and ModelConfig of a checkpoint or run dir,
    verified first."""
    ckpt = resolve_checkpoint_dir(directory)
    verify_checkpoint(ckpt, metadata=False)
    model_cfg = read_model_config(ckpt)
    metadata = read_dcp_metadata(ckpt)
    prefix = MODEL_KEY + "."
    state: dict[str, torch.Tensor] = {}
    for key, meta in metadata.state_dict_metadata.items():
        if not key.startswith(prefix):
            continue
        if not isinstance(meta, TensorStorageMetadata):
            raise CheckpointError(f"{ckpt}: model entry {key!r} is a pickled object, not a tensor: refusing it")
        state[key[len(prefix) :]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not state:
        raise CheckpointError(f"{ckpt}: checkpoint holds no model tensors")
    load_tensors({MODEL_KEY: state}, ckpt, no_dist=True)
    return state, model_cfg
