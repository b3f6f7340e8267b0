"""Where a run writes: the default run directory, the same on every rank of a launch and one per job of a sweep.

`trainer.run_dir` defaults to `${loom_run_dir:${trainer.name}}`:
- one job: outputs/<name>-<stamp>, the stamp being a Slurm job id (a requeued job finds its own directory and
  resumes), torchrun's rendezvous id when several ranks start (they must agree), else the time to the second;
- Hydra multirun (`-m optim.lr=1e-3,3e-3`): the job's own directory, <sweep dir>/<job number>, with the sweep dir
  outputs/<name>-sweep-<stamp>. A sweep's jobs therefore never share a run directory (so never resume each
  other's checkpoints), which the old per-name cache did.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf


class RunDirError(ValueError):
    """The run directory cannot be decided or used (the message names the fix)."""


def world_size_from_env() -> int:
    """Processes in this launch: torchrun's WORLD_SIZE, else the tasks of an srun step (the same rule as
    launcher/distributed.py), else 1."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_STEP_NUM_TASKS" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    return 1


def _shared_launch_id() -> Optional[str]:
    """An id every rank of one launch sees alike: LOOM_RUN_ID, a Slurm job id, or torchrun's rendezvous run id."""
    if os.environ.get("LOOM_RUN_ID"):
        return os.environ["LOOM_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        return f"job{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return run_id if run_id and run_id != "none" else None


@functools.lru_cache(maxsize=None)
def launch_stamp() -> str:
    """This launch's stamp, computed once per process (Hydra resolves the run dir more than once)."""
    shared = _shared_launch_id()
    if world_size_from_env() > 1 and shared is None:
        raise RunDirError(
            f"{world_size_from_env()} processes but no shared run id (no SLURM_JOB_ID / TORCHELASTIC_RUN_ID): set "
            f"trainer.run_dir=<path> so every rank writes to the same run directory"
        )
    return shared if shared is not None else time.strftime("%Y%m%d-%H%M%S")


def _hydra_job_dir() -> Optional[str]:
    """The current job's output directory when running under Hydra multirun, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return hydra_cfg.runtime.output_dir  # <sweep dir>/<sweep subdir>, set by Hydra for each job


def default_run_dir(name: str) -> str:
    job_dir = _hydra_job_dir()
    if job_dir is not None:
        return job_dir
    return f"outputs/{name}-{launch_stamp()}"


def default_sweep_dir(name: str) -> str:
    return f"outputs/{name}-sweep-{launch_stamp()}"


def register_resolvers() -> None:
    for resolver_name, fn in (("loom_run_dir", default_run_dir), ("loom_sweep_dir", default_sweep_dir)):
        if not OmegaConf.has_resolver(resolver_name):
            OmegaConf.register_new_resolver(resolver_name, fn)


# Keys that do not change what a run computes (how long, how often it logs or saves, on what layout), so a run
# directory's run may be resumed with other values. Anything else (model, data, batch, optimizer, schedule, seed,
# precision) makes it a different run, refused unless listed in trainer.resume_allow.
OPERATIONAL_KEYS = (
    "trainer.name",
    "trainer.run_dir",
    "trainer.max_steps",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_batches",
    "trainer.sample_every",
    "trainer.sample_prompt",
    "trainer.sample_tokens",
    "trainer.checkpoint_every",
    "trainer.checkpoint_async",
    "trainer.keep_checkpoints",
    "trainer.resume",
    "trainer.resume_allow",
    "trainer.init_from",
    "trainer.dist_timeout_s",
    "trainer.peer_timeout_s",
    "trainer.hang_timeout_s",
    "trainer.progress_bar",
    "trainer.device",
    "trainer.micro_batch_size",
    "data.path",
    "data.cache_dir",
    "parallel.",
    "logging.",
    "eval.",  # downstream evaluation reads the model, never changes it
    "cluster.",
)
SAVED_CONFIG = "config.yaml"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def covers(entry: str, key: str) -> bool:
    """An OPERATIONAL_KEYS / resume_allow entry covers a key: itself, or every key under it ("parallel." or
    "model" both cover model.dim / parallel.tp)."""
    return key == entry or key.startswith(entry if entry.endswith(".") else entry + ".")


def _schema_defaults() -> dict[str, Any]:
    from launcher.config import TrainConfig

    return _flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False))


def changed_keys(saved: dict[str, Any], new: dict[str, Any], allow: list[str]) -> list[str]:
    """'key: old -> new' for every key that differs between two resolved configs and is neither operational nor
    allowed. A key present on one side only (a config saved by another Loom version) counts as changed unless it
    holds this version's default, or this version has no such key."""
    old_flat, new_flat = _flatten(saved), _flatten(new)
    defaults = _schema_defaults()
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if any(covers(entry, key) for entry in (*OPERATIONAL_KEYS, *allow)):
            continue
        if key not in old_flat or key not in new_flat:
            present = old_flat.get(key, new_flat.get(key))
            if key not in defaults or defaults[key] == present:
                continue
        old, value = old_flat.get(key, "<absent>"), new_flat.get(key, "<absent>")
        if old != value:
            changes.append(f"{key}: {old!r} -> {value!r}")
    return changes


def check_same_run(run_dir: str | os.PathLike, config: dict[str, Any], allow: list[str]) -> None:
    """RunDirError when `run_dir` already holds a run whose saved config differs from `config` in keys that make
    it another run (not operational, not in `allow`): its checkpoints and metrics must never be taken over by
    another run. Called before any process group exists."""
    saved_path = Path(run_dir) / SAVED_CONFIG
    if not saved_path.is_file():
        return
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable saved config cannot vouch for the run
        raise RunDirError(f"{saved_path}: unreadable ({exc}); choose another trainer.run_dir") from exc
    changes = changed_keys(saved, config, allow)
    if changes:
        keys = [change.split(":")[0] for change in changes]
        raise RunDirError(
            f"trainer.run_dir={run_dir} holds a different run (its {SAVED_CONFIG} differs): "
            + "; ".join(changes)
            + f". To resume that run with these changes anyway, add trainer.resume_allow=[{','.join(keys)}]; to "
            f"start a new run, choose another trainer.run_dir"
        )


class RunLock:
    """One writer per run directory: rank 0 holds <run_dir>/.lock for the run's lifetime (cluster/ownership.py:
    the kernel drops it however the process dies), so a second launch on a live run directory fails at once naming
    the holder's host and pid."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        from cluster.ownership import DirectoryInUse, hold_lock

        try:
            self.file = hold_lock(run_dir, f"trainer.run_dir={run_dir}")
        except DirectoryInUse as exc:
            raise RunDirError(str(exc)) from None

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()  # closing the descriptor releases the flock
