"""Training checkpoints for every layout: save every N steps and at the end, resume exactly, start from weights.

One `Checkpointer` serves every train module: it asks the module for its state (`TrainModule.state_dict`) and
gives it back (`load_state_dict`), so it never knows the layout. The directory format, its manifest, verification
and atomic publish are model/checkpoint_io.py (one definition, which `python -m model.hf` reads too without
importing the launcher). A checkpoint `<run_dir>/checkpoints/step_<N:08d>/` holds:
- a torch.distributed.checkpoint (DCP) save of the tensors: "model" (weights by unwrapped parameter name) and
  "optimizer" (moments and step counts by parameter name, "state.<name>.<key>"). Every engine writes this one
  format (DeepSpeed ZeRO's partitions are gathered by name too), every rank writes its own shards in parallel, and
  a checkpoint reloads onto any other layout, engine and world size;
- `train_state.json` (rank 0): step, world size, lr-schedule position, data position, fingerprint and
  decontamination record, and the resolved config; `rng_rank<r>.json`: each rank's RNG states; what a module
  keeps outside DCP (`save_native`: no built-in engine does); model_config.json; and, written last, the COMPLETE
  manifest (size and SHA-256 of every file). Non-tensor state is JSON, never pickled.

Checkpoints are untrusted. Resume takes the newest checkpoint that verifies (manifest, checksums: the ranks share
the hashing) and loads; any failure (a missing or corrupt file, an exception while loading) is logged and the next
older one is tried. If checkpoints exist but none loads, the run refuses to start (nothing is overwritten);
`trainer.resume=never` starts the run over with the old checkpoints set aside. A checkpoint is pruned only once a
newer one has been saved and verified by reading it back. A resume whose config or data differ from the
checkpoint's in what the run computes is refused naming every changed key (launcher/run_dir.py), unless
trainer.resume_allow names them. Before a save, free space is compared with the previous checkpoint's size: a
full disk gives "no space: need X, have Y at PATH" and leaves the last good checkpoint intact.

trainer.checkpoint_async=true writes while training goes on: the loop waits only while the tensors are staged into
host memory (pinned on CUDA) and the small files are written; DCP's `async_save` writes the tensors in a
background thread and a finaliser thread then hashes, publishes, reads back and prunes exactly as a synchronous
save does, so the manifest, verification, atomic publish and pruning keep their guarantees. At most one save is
in flight (the next save, the last step and a stop signal wait for it, and a failure is raised there); a process
killed mid-write leaves only a hidden temporary directory, and resume takes the previous checkpoint.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import random
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

from launcher.distributed import DistEnv, barrier, broadcast_object
from launcher.optim import merge_disjoint
from launcher.run_dir import changed_keys, covers
from model.checkpoint_io import (
    CHECKPOINTS_DIR,
    MODEL_KEY,
    CheckpointError,
    atomic_write_text,
    checkpoint_files,
    checkpoint_step,
    describe_files,
    list_checkpoint_dirs,
    load_tensors,
    publish_checkpoint,
    read_manifest,
    resolve_checkpoint_dir,
    single_process_dcp,
    step_dir_name,
    temporary_dir_for,
    verify_checkpoint,
    write_model_config,
)

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.json"
DATA_FINGERPRINT = "data.fingerprint"  # the key a resume names (and trainer.resume_allow takes) for other data
_TENSOR_KEYS = (MODEL_KEY, "optimizer")
_SPACE_MARGIN = 1.1  # a save needs the previous checkpoint's size, plus 10% ...
_SPACE_SLACK = 16 * 2**20  # ... plus 16 MiB for the small files
# Tests only: the background save of this step stalls after DCP's write, before its manifest, until the process is
# killed (how a test catches an asynchronous write mid-way with kill -9).
_STALL_ENV = "LOOM_TEST_STALL_ASYNC_SAVE_AT_STEP"


class NoSpaceError(OSError):
    """The checkpoint does not fit on the disk (the message says how much is needed and free, where)."""


class ResumeRefused(ValueError):
    """The checkpoint belongs to a run with another config or other data: resuming would not continue it."""


def _rng_state(device: torch.device) -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
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


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _is_no_space(exc: BaseException) -> bool:
    """True when an exception (or one it wraps, e.g. DCP's per-rank failures) is a full disk."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        error = stack.pop()
        if isinstance(error, tuple):  # DCP's failures are (exception, traceback) pairs
            stack += list(error)
            continue
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error):
            return True
        stack += [error.__cause__, error.__context__, *getattr(error, "failures", {}).values()]
    return False


def barrier_on(group: Any) -> None:
    """A barrier on `group` (None: the default group); nothing without a process group."""
    if dist.is_initialized():
        dist.barrier(group=group)


def _make_stager(device: torch.device) -> Any:
    """DCP's stager copying into host memory (pinned for CUDA), synchronously: the copy is done when a save
    returns, so training may change the tensors right after. It caches its buffers by source storage."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    return DefaultStager(
        StagingOptions(
            use_pinned_memory=device.type == "cuda",
            use_shared_memory=False,
            use_async_staging=False,
            use_non_blocking_copy=False,
        )
    )


class Checkpointer:
    """Saves and restores the training state of one run directory, whatever the train module.

    `async_save` (trainer.checkpoint_async) writes checkpoints while training goes on (see `save`); its background
    collectives run on a gloo process group of their own, created here (every rank constructs the Checkpointer),
    so they never interleave with the loop's."""

    def __init__(
        self, run_dir: Path, env: DistEnv, keep: int, *, async_save: bool = False, timeout_s: int = 600
    ) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / CHECKPOINTS_DIR
        self.env = env
        self.keep = keep
        self.last_saved_step: Optional[int] = None
        self.verified: set[str] = set()  # checkpoint names this run has read back whole
        self.async_save = async_save
        self._group: Any = None  # the process group of the background saves (None: the default group)
        if async_save and dist.is_initialized():
            self._group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        self._stager: Any = None  # DCP's DefaultStager, made at the first asynchronous save
        self._in_flight: Optional[tuple[int, Path, Any, float]] = None  # (step, tmp dir, future, start time)
        self._figures: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------- agreement
    def _all(self, ok: bool, group: Any = None) -> bool:
        """True only if `ok` on every rank (a collective on `group`, None: the default one, on the run's device)."""
        if not dist.is_initialized():
            return ok
        on_cuda = group is None and self.env.device.type == "cuda"
        flag = torch.tensor([1 if ok else 0], device=self.env.device if on_cuda else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
        return bool(flag.item())

    def _verify(self, directory: Path, group: Any = None) -> Optional[str]:
        """None if `directory` verifies on every rank (each rank checksums its share of the files), else a reason
        (a collective on `group`)."""
        reason = None
        try:
            verify_checkpoint(directory, part=(self.env.rank, self.env.world_size), metadata=self.env.is_main)
        except CheckpointError as exc:
            reason = str(exc)
        if self._all(reason is None, group):
            return None
        reasons = [None] * self.env.world_size if dist.is_initialized() else [reason]
        if dist.is_initialized():
            dist.all_gather_object(reasons, reason, group=group)
        return "; ".join(r for r in reasons if r)

    # ---------------------------------------------------------------------------------------------- start
    def set_aside_old_run(self) -> None:
        """trainer.resume=never on a run dir that holds checkpoints: move them (and the metrics) aside, never
        delete them, so the new run starts from step 0 in this directory."""
        if self.env.is_main and list_checkpoint_dirs(self.run_dir):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside = self.run_dir / f"{CHECKPOINTS_DIR}.replaced-{stamp}"
            self.root.rename(aside)
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.exists():
                metrics.rename(self.run_dir / f"metrics.jsonl.replaced-{stamp}")
            log.warning("trainer.resume=never: the previous checkpoints are kept in %s; starting from step 0", aside)
        barrier()

    def remove_stale_temporaries(self) -> None:
        """Partial saves a dead run left (they may hold a full disk's worth of bytes)."""
        if self.env.is_main and self.root.is_dir():
            for stale in [*self.root.glob(".tmp-step_*"), *self.root.glob(".stale-step_*")]:
                log.warning("removing %s, left by a save that did not finish", stale)
                shutil.rmtree(stale, ignore_errors=True)
        barrier()

    # ---------------------------------------------------------------------------------------------- save
    def save(self, step: int, module: Any, loader: Any, config: dict[str, Any], *, wait: bool = False) -> Path:
        """Save the run's state at `step` into `<run_dir>/checkpoints/step_<N>` (a collective).

        Synchronous: everything is written, published, read back and pruned before this returns. Asynchronous
        (`async_save`): the tensors are staged into host memory (pinned on CUDA) and the small files written here;
        DCP then writes the tensors in a background thread, which also hashes, publishes, reads back and prunes,
        while training goes on. At most one save is in flight: a save waits for the previous one first (and raises
        its error). `wait=True` (the last step, a stop signal) returns only once this save is published. The time
        the loop was blocked is logged and kept for the metrics (`pop_figures`)."""
        started = time.perf_counter()
        self.wait()
        final = self.root / step_dir_name(step)
        tmp = temporary_dir_for(final)
        state = module.state_dict()
        self._check_space(state, step)
        try:
            self._write_small_files(tmp, step, module, loader, config, state)
            tensors = {key: state[key] for key in _TENSOR_KEYS}
            if self.async_save:
                staging = time.perf_counter()
                self._start_background_write(tmp, step, tensors, started)
                staging = time.perf_counter() - staging
            else:
                self._write_tensors(tmp, tensors, group=None)
                self._publish(tmp, step, group=None)
        except BaseException as exc:
            self._raise_failed_save(tmp, step, exc)
        if not self.async_save:
            self._read_back_and_prune(final, step, group=None)
        blocked = time.perf_counter() - started
        self._figures["checkpoint/blocked_s"] = blocked
        log.info(
            "checkpoint step %d: the loop was blocked %.3f s (%s)",
            step,
            blocked,
            f"{staging:.3f} s of it staging; writing in the background" if self.async_save else "synchronous save",
        )
        if wait:
            self.wait()
        return final

    def prepare_staging(self, module: Any) -> None:
        """Allocate (and on CUDA pin) the host buffers asynchronous saves stage into, once, outside any save: the
        first save then costs the loop a copy, not an allocation. Called after the first step (AdamW creates its
        moments there); every rank calls it (a train module's state may be a collective)."""
        if not self.async_save or self._stager is not None:
            return
        started = time.perf_counter()
        state = module.state_dict()
        self._stager = _make_stager(self.env.device)
        self._stager.stage({key: state[key] for key in _TENSOR_KEYS})
        log.info("staging buffers for asynchronous checkpoints allocated in %.3f s", time.perf_counter() - started)

    def wait(self) -> None:
        """Wait for the save in flight, if any (a collective when one is): its error, if it failed, is raised here
        with its partial directory removed, so a checkpoint is never silently missing."""
        pending, self._in_flight = self._in_flight, None
        if pending is None:
            return
        step, tmp, future, started = pending
        try:
            finished = future.result()
        except BaseException as exc:
            self._raise_failed_save(tmp, step, exc)
        total = finished - started  # when the finaliser ended, not when the loop looked
        self._figures["checkpoint/write_s"] = total
        log.info("checkpoint step %d: written in the background in %.3f s", step, total)

    def close(self) -> None:
        """Wait for the save in flight and free the staging buffers (the end of training)."""
        self.wait()
        if self._stager is not None:
            self._stager.close()
            self._stager = None

    def pop_figures(self) -> dict[str, float]:
        """The timings of the saves since the last call: `checkpoint/blocked_s` (the loop's wait for the latest
        save) and `checkpoint/write_s` (start to publish of the latest save finished in the background)."""
        figures, self._figures = self._figures, {}
        return figures

    def _raise_failed_save(self, tmp: Path, step: int, exc: BaseException) -> None:
        """Remove the partial save and raise: NoSpaceError for a full disk, else the error itself."""
        free = shutil.disk_usage(self.root).free if self.root.is_dir() else 0
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_no_space(exc):
            raise NoSpaceError(
                f"no space: saving step {step} into {self.root} failed with {free} bytes free "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the partial save was "
                f"removed and the last good checkpoint is intact: free space (or move trainer.run_dir) and "
                f"relaunch to resume"
            ) from exc
        raise exc

    def _write_small_files(
        self, tmp: Path, step: int, module: Any, loader: Any, config: dict[str, Any], state: dict[str, Any]
    ) -> None:
        """The temporary directory with everything but the DCP tensors: the module's native state, this rank's
        RNG, the training state and the model config (all captured now, at the step being saved)."""
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        module.save_native(tmp)
        atomic_write_text(tmp / f"rng_rank{self.env.rank}.json", json.dumps(_rng_state(self.env.device)))
        if self.env.is_main:
            train_state = {
                "step": step,
                "world_size": self.env.world_size,
                "schedule": state["schedule"],
                "dataloader": loader.state_dict(),
                "data_fingerprint": loader.fingerprint(),
                "data_decontamination": loader.decontamination(),  # per eval task (data_pipeline/decontamination)
                "config": config,
            }
            atomic_write_text(tmp / TRAIN_STATE_FILE, json.dumps(train_state, indent=1))
            write_model_config(tmp, module.cfg.model)

    def _write_tensors(self, tmp: Path, tensors: dict[str, Any], group: Any) -> None:
        with single_process_dcp():
            dcp.save(tensors, checkpoint_id=str(tmp), process_group=group, no_dist=not dist.is_initialized())

    def _start_background_write(self, tmp: Path, step: int, tensors: dict[str, Any], started: float) -> None:
        """Stage `tensors` into host memory (the loop waits for this copy only), then let DCP write them in its
        background thread and our finaliser publish them once written (the loop does not wait for either)."""
        if not dist.is_initialized():  # DCP's thread warns about the single process that is intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
        if self._stager is None:  # kept for the run: it reuses its (pinned) buffers from one save to the next
            self._stager = _make_stager(self.env.device)
        with single_process_dcp():
            written = dcp.async_save(
                tensors,
                checkpoint_id=str(tmp),
                process_group=self._group,
                async_stager=self._stager,
                no_dist=not dist.is_initialized(),
            )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-checkpoint")
        future = executor.submit(self._finalise_in_background, written, tmp, step)
        executor.shutdown(wait=False)  # the thread ends with its one task
        self._in_flight = (step, tmp, future, started)

    def _finalise_in_background(self, written: Any, tmp: Path, step: int) -> float:
        """After DCP's write: hash, publish, read back and prune, with collectives on the checkpoint's own process
        group only (the loop's collectives run meanwhile on the default one). Returns when it finished."""
        written.result()
        stall = os.environ.get(_STALL_ENV)
        if stall is not None and int(stall) == step:  # tests: a write caught mid-way by kill -9
            log.warning("%s=%s: the save of step %d stalls before its manifest", _STALL_ENV, stall, step)
            while True:
                time.sleep(1)
        self._publish(tmp, step, group=self._group)
        self._read_back_and_prune(self.root / step_dir_name(step), step, group=self._group)
        return time.perf_counter()

    def _publish(self, tmp: Path, step: int, group: Any) -> None:
        """Hash every file (the ranks share the files), write the manifest last and rename into place."""
        barrier_on(group)  # every rank's files are in before they are hashed and listed
        names = checkpoint_files(tmp)
        share = describe_files(tmp, names[self.env.rank :: self.env.world_size])
        if dist.is_initialized():
            shares = [None] * self.env.world_size
            dist.all_gather_object(shares, share, group=group)
            share = {name: entry for part in shares for name, entry in part.items()}
        if self.env.is_main:
            publish_checkpoint(tmp, self.root / step_dir_name(step), step, files=share)
        barrier_on(group)

    def _read_back_and_prune(self, final: Path, step: int, group: Any) -> None:
        reason = self._verify(final, group=group)  # read back before anything older is pruned
        if reason is not None:
            raise CheckpointError(f"the checkpoint just saved does not verify: {reason}")
        self.verified.add(final.name)
        if self.env.is_main:
            self._prune()
            log.info("saved checkpoint %s", final)
        barrier_on(group)
        self.last_saved_step = step

    def _check_space(self, state: dict[str, Any], step: int) -> None:
        """NoSpaceError before writing when the disk cannot hold the checkpoint: the previous checkpoint's size,
        or before the first one this rank's tensor bytes times the ranks, plus a margin."""
        need = None
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            previous = [d for d in list_checkpoint_dirs(self.run_dir) if d.name in self.verified]
            if previous:
                size = sum(entry["size"] for entry in read_manifest(previous[-1]).values())
            else:
                # DTensor.numel() is the global size and DCP writes each shard once: the checkpoint's bytes.
                size = sum(
                    t.numel() * t.element_size()
                    for key in _TENSOR_KEYS
                    for t in state[key].values()
                    if isinstance(t, torch.Tensor)
                )
            need = int(size * _SPACE_MARGIN) + _SPACE_SLACK
            free = shutil.disk_usage(self.root).free
            need = (need, free) if free < need else None
        need = broadcast_object(need)
        if need is not None:
            raise NoSpaceError(
                f"no space: saving step {step} needs about {_gib(need[0])}, have {_gib(need[1])} at "
                f"{self.root}; nothing was written and the last good checkpoint is intact: free space "
                f"(or move trainer.run_dir) and relaunch to resume"
            )

    def _prune(self) -> None:
        """Delete checkpoints older than the `keep`-th newest that this run verified (never a good one before a
        newer one verified)."""
        if self.keep <= 0:
            return
        verified = [d for d in list_checkpoint_dirs(self.run_dir) if d.name in self.verified]
        if len(verified) < self.keep:
            return
        oldest_kept = checkpoint_step(verified[-self.keep])
        for old in list_checkpoint_dirs(self.run_dir):
            if checkpoint_step(old) < oldest_kept:
                shutil.rmtree(old, ignore_errors=True)
                self.verified.discard(old.name)

    # ---------------------------------------------------------------------------------------------- resume
    def restore(self, module: Any, loader: Any, config: dict[str, Any], allow: list[str]) -> int:
        """Resume from the newest checkpoint that verifies and loads; returns its step (0 when the run dir has
        none). CheckpointError when checkpoints exist but none loads; ResumeRefused on config or data drift."""
        candidates = list(reversed(list_checkpoint_dirs(self.run_dir)))
        failures = []
        for directory in candidates:
            reason = self._verify(directory)
            if reason is None:
                train_state = self._read_train_state(directory)
                if isinstance(train_state, str):
                    reason = train_state
            if reason is None:
                self._refuse_drift(directory, train_state, config, loader, allow)
                reason = self._load(directory, train_state, module, loader)
            if reason is None:
                self.verified.add(directory.name)
                self.last_saved_step = int(train_state["step"])
                log.info("resumed from %s (step %d)", directory, self.last_saved_step)
                return self.last_saved_step
            log.warning("cannot resume from %s: %s; trying an older checkpoint", directory, reason)
            failures.append(f"{directory.name}: {reason}")
        if failures:
            raise CheckpointError(
                f"no checkpoint in {self.root} can be resumed, so nothing was changed:\n  "
                + "\n  ".join(failures)
                + "\nTo start this run over from step 0 instead (the old checkpoints are moved aside, not deleted), "
                "relaunch with trainer.resume=never"
            )
        return 0

    def _read_train_state(self, directory: Path) -> dict[str, Any] | str:
        """The checkpoint's train_state.json, or why it cannot be used (agreed by every rank)."""
        state: dict[str, Any] | str
        try:
            state = read_train_state(directory)
            if int(state["step"]) != checkpoint_step(directory):
                raise CheckpointError(f"{TRAIN_STATE_FILE} step={state['step']} disagrees with the directory name")
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            state = f"{type(exc).__name__}: {exc}"
        if self._all(not isinstance(state, str)):
            return state
        return state if isinstance(state, str) else f"{TRAIN_STATE_FILE} is unreadable on another rank"

    def _refuse_drift(
        self, directory: Path, train_state: dict[str, Any], config: dict[str, Any], loader: Any, allow: list[str]
    ) -> None:
        """ResumeRefused, naming every key, when the checkpoint's run computed something else than this config
        would (model shape, data, batch, optimizer, schedule, seed...) and trainer.resume_allow does not list it."""
        changes = changed_keys(train_state.get("config", {}), config, allow)
        saved_data = train_state.get("data_fingerprint")
        if saved_data != loader.fingerprint() and not any(covers(entry, DATA_FINGERPRINT) for entry in allow):
            changes.append(f"{DATA_FINGERPRINT} (the data's content): {saved_data} -> {loader.fingerprint()}")
        if changes:
            keys = [change.split(":")[0].split(" ")[0] for change in changes]
            raise ResumeRefused(
                f"{directory} was saved by a run with another config or data, so resuming would not continue it: "
                + "; ".join(changes)
                + f". To resume with these changes anyway, add "
                f"trainer.resume_allow=[{','.join(keys)}]; to start a new run, choose another trainer.run_dir"
            )

    def _load(self, directory: Path, train_state: dict[str, Any], module: Any, loader: Any) -> Optional[str]:
        """Load everything from `directory`; None on success on every rank, else why not (a collective)."""
        reason = None
        try:
            state = module.state_dict()
            tensors = {key: state[key] for key in _TENSOR_KEYS}
            load_tensors(tensors, directory, no_dist=not dist.is_initialized())
            module.load_state_dict({**tensors, "schedule": train_state["schedule"]}, directory)
            loader.load_state_dict(train_state["dataloader"])
            rng_file = directory / f"rng_rank{self.env.rank}.json"
            if rng_file.is_file():
                _set_rng_state(json.loads(rng_file.read_text()), self.env.device)
            else:
                log.warning(
                    "%s has no RNG state for rank %d (saved on %d ranks): RNG continues from the seed",
                    directory,
                    self.env.rank,
                    train_state["world_size"],
                )
        except (Exception, CheckpointException) as exc:  # noqa: BLE001 - any failure falls back to an older one
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None if self._all(reason is None) else (reason or "loading failed on another rank")


def read_train_state(directory: Path) -> dict[str, Any]:
    path = Path(directory) / TRAIN_STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from exc


def load_model_weights(modules: list[nn.Module], source: str | Path) -> Path:
    """The "model" weights of a checkpoint (a checkpoint dir, or a run dir's newest one that verifies, or a Hugging
    Face model directory: launcher/hf_init.py) into `modules` (one model, or a pipeline rank's stage modules),
    whatever their layout; returns the directory. LoRA adapters (model.lora) keep their initialisation: init_from
    gives the base weights."""
    from launcher.hf_init import hf_init_dir, load_hf_weights
    from model.lora import is_adapter_key

    if hf_init_dir(source) is not None:
        load_hf_weights(modules, Path(source))
        return Path(source)
    directory = resolve_checkpoint_dir(source)
    verify_checkpoint(directory)
    own = [{k: v for k, v in get_model_state_dict(module).items() if not is_adapter_key(k)} for module in modules]
    state = {MODEL_KEY: merge_disjoint(own, MODEL_KEY)}
    load_tensors(state, directory, no_dist=not dist.is_initialized())
    for module, keys in zip(modules, own):
        set_model_state_dict(
            module, {key: state[MODEL_KEY][key] for key in keys}, options=StateDictOptions(strict=False)
        )
    log.info("initialised model weights from %s", directory)
    return directory
