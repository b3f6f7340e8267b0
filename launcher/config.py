"""Typed training configuration and the checks that stop a bad run before any work.

The dataclasses are Hydra structured configs (registered in the ConfigStore as `train_schema`), so Hydra itself
rejects a misspelt key or a wrong type while composing. `validate()` then checks what types cannot express
(divisibility, ranges, files that must exist, combinations) and raises ConfigError naming the key and the fix.
Nothing here builds a model, opens data or starts a process group, so a bad config fails within seconds (the
time is interpreter start-up plus torch's import, which `model/__init__` and `parallel/__init__` pull in).
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from cluster.config import ClusterConfig
from model.config import ModelConfig
from parallel.config import ParallelConfig


class ConfigError(ValueError):
    """A training config that cannot run; the message names the key and how to fix it."""


@dataclass
class DataConfig:
    name: str = "embedded"  # embedded (generated corpus, built on first use) | packed (shards at `path`) | synthetic
    path: Optional[str] = None  # directory of packed shards (data=packed)
    cache_dir: str = ".cache/loom/embedded"  # where data=embedded builds its shards
    seq_len: int = 128  # tokens per training sequence (each sample reads seq_len + 1 tokens)
    val_fraction: float = 0.05  # tail of the token stream held out for evaluation
    seed: Optional[int] = None  # shuffle seed; None: trainer.seed


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-3
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled (AdamW)
    decay_norms_and_biases: bool = False
    decay_embeddings: bool = False
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    fused: Optional[bool] = None  # None: fused AdamW on CUDA, foreach elsewhere


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # final lr / peak lr (cosine and wsd)
    decay_fraction: float = 0.2  # wsd: fraction of max_steps spent in the final annealing phase
    decay_shape: str = "linear"  # wsd annealing shape: linear | cosine | sqrt (1 - sqrt)


@dataclass
class TrainerConfig:
    name: str = "loom"
    run_dir: Optional[str] = None  # None: outputs/<name>-<timestamp or job id>, decided once for all ranks
    max_steps: int = 150
    seed: int = 1337
    global_batch_size: Optional[int] = 16  # sequences per optimizer step, over all data-parallel ranks
    global_batch_tokens: Optional[int] = None  # alternative to global_batch_size: tokens per step
    micro_batch_size: int = 8  # sequences per forward/backward on one rank
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + dynamic loss scaling)
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10
    eval_every: int = 50  # 0 disables periodic evaluation (a final one still runs when eval_batches > 0)
    eval_batches: int = 4  # micro batches of held-out data per evaluation (over all dp ranks)
    sample_every: int = 0  # 0: sample only at the end; < 0 never
    sample_prompt: str = "The"
    sample_tokens: int = 32
    checkpoint_every: int = 50  # 0 disables periodic checkpoints (one is still written at the end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 keeps all
    resume: str = "auto"  # auto: continue from the newest complete checkpoint in run_dir | never
    init_from: Optional[str] = None  # checkpoint or run dir whose model weights start this run
    dist_timeout_s: int = 600  # process-group timeout
    progress_bar: bool = True


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with WANDB_API_KEY, else offline) | online | offline | disabled
    project: str = "loom"
    entity: Optional[str] = None


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    plot: bool = True
    level: str = "INFO"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where `launcher.submit` runs the job (Slurm)


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


_CHOICES = {
    "data.name": ("embedded", "packed", "synthetic"),
    "optim.name": ("adamw",),
    "schedule.name": ("cosine", "wsd", "constant"),
    "schedule.decay_shape": ("linear", "cosine", "sqrt"),
    "trainer.precision": ("fp32", "bf16", "fp16"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.resume": ("auto", "never"),
    "logging.wandb.mode": ("auto", "online", "offline", "disabled"),
}


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def world_size_from_env() -> int:
    """Processes in this launch: torchrun's WORLD_SIZE, else the tasks of an srun step (the same rule as
    launcher/distributed.py), else 1."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_STEP_NUM_TASKS" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_STEP_NUM_TASKS"])
    return 1


def effective_parallel(parallel: Any, world_size: int) -> Any:
    """The layout to use: an all-ones layout (parallel=single, the default) launched on N > 1 processes means
    plain DDP over all of them, so the same command works under torchrun; any explicit layout is kept as is."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(parallel):
        parallel = OmegaConf.to_object(parallel)
    degrees = (parallel.dp_replicate, parallel.dp_shard, parallel.cp, parallel.tp, parallel.pp)
    if world_size > 1 and all(d == 1 for d in degrees) and parallel.engine == "torch":
        from dataclasses import replace

        return replace(parallel, dp_replicate=world_size)
    return parallel


def batch_plan(cfg: Any, dp_degree: int) -> tuple[int, int]:
    """(global batch in sequences, gradient accumulation steps); ConfigError if the numbers do not divide."""
    t, seq_len = cfg.trainer, cfg.data.seq_len
    if (t.global_batch_size is None) == (t.global_batch_tokens is None):
        raise ConfigError(
            "set exactly one of trainer.global_batch_size (sequences) and trainer.global_batch_tokens "
            f"(got {t.global_batch_size} and {t.global_batch_tokens}); set the other to null"
        )
    if t.global_batch_tokens is not None:
        if t.global_batch_tokens <= 0 or t.global_batch_tokens % seq_len != 0:
            raise ConfigError(
                f"trainer.global_batch_tokens={t.global_batch_tokens} must be a positive multiple of "
                f"data.seq_len={seq_len}"
            )
        global_batch = t.global_batch_tokens // seq_len
        key = "trainer.global_batch_tokens"
    else:
        global_batch = t.global_batch_size
        key = "trainer.global_batch_size"
    if global_batch <= 0:
        raise ConfigError(f"{key} must be positive, got {global_batch}")
    if t.micro_batch_size <= 0:
        raise ConfigError(f"trainer.micro_batch_size must be positive, got {t.micro_batch_size}")
    per_step = t.micro_batch_size * dp_degree
    if global_batch % per_step != 0:
        raise ConfigError(
            f"{key} gives {global_batch} sequences per step, not divisible by trainer.micro_batch_size="
            f"{t.micro_batch_size} x {dp_degree} data-parallel ranks = {per_step}: make the global batch a "
            f"multiple of {per_step} or change trainer.micro_batch_size"
        )
    return global_batch, global_batch // per_step


def validate(cfg: Any, world_size: int) -> None:
    """Raise ConfigError for a config that cannot run on `world_size` processes; builds and opens nothing."""
    for key, allowed in _CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    t, s, d, o = cfg.trainer, cfg.schedule, cfg.data, cfg.optim
    if t.max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be positive, got {t.max_steps}")
    if t.log_every <= 0:
        raise ConfigError(f"trainer.log_every must be positive, got {t.log_every}")
    for key in ("eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "sample_tokens"):
        if _get(cfg, f"trainer.{key}") < 0:
            raise ConfigError(f"trainer.{key} must be >= 0 (0 disables), got {_get(cfg, f'trainer.{key}')}")
    if t.dist_timeout_s <= 0:
        raise ConfigError(f"trainer.dist_timeout_s must be positive, got {t.dist_timeout_s}")
    if s.warmup_steps < 0:
        raise ConfigError(f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    if s.warmup_steps >= t.max_steps and s.warmup_steps > 0:
        raise ConfigError(
            f"schedule.warmup_steps={s.warmup_steps} is not shorter than trainer.max_steps={t.max_steps}: "
            f"lower the warmup or train longer"
        )
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio={s.min_lr_ratio} must be in [0, 1]")
    if s.name == "wsd":
        if not 0.0 < s.decay_fraction <= 1.0:
            raise ConfigError(f"schedule.decay_fraction={s.decay_fraction} must be in (0, 1] for schedule=wsd")
        decay_steps = math.ceil(s.decay_fraction * t.max_steps)
        if s.warmup_steps + decay_steps > t.max_steps:
            raise ConfigError(
                f"schedule.warmup_steps={s.warmup_steps} + decay phase {decay_steps} steps "
                f"(schedule.decay_fraction={s.decay_fraction} x trainer.max_steps={t.max_steps}) exceed the run: "
                f"lower one of them"
            )
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if not (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0):
        raise ConfigError(f"optim.beta1={o.beta1} and optim.beta2={o.beta2} must be in [0, 1)")
    if o.weight_decay < 0 or o.grad_clip < 0 or o.eps <= 0:
        raise ConfigError("optim.weight_decay and optim.grad_clip must be >= 0 and optim.eps > 0")
    if d.seq_len <= 0:
        raise ConfigError(f"data.seq_len must be positive, got {d.seq_len}")
    if d.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"data.seq_len={d.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: lower data.seq_len or "
            f"raise model.max_seq_len"
        )
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    if d.name == "packed":
        if not d.path:
            raise ConfigError("data=packed needs data.path=<directory of packed shards> (it is null)")
        path = Path(d.path)
        if not path.is_dir():
            raise ConfigError(f"data.path={d.path}: no such directory; point it at the data pipeline's shard output")
        from data_pipeline.formats import list_shards

        if not list_shards(path):
            raise ConfigError(f"data.path={d.path}: no packed shards (*.json headers) in it; run the tokenize step")
    if t.init_from is not None and not Path(t.init_from).exists():
        raise ConfigError(f"trainer.init_from={t.init_from}: no such checkpoint or run directory")
    if not t.run_dir:
        raise ConfigError("trainer.run_dir is empty: give a directory, or leave the default (outputs/<name>-<id>)")

    # The model's own invariants (heads divide dim, ...): building the dataclass runs its validation.
    model_cfg = _to_object(cfg.model, "model")
    parallel = effective_parallel(_to_object(cfg.parallel, "parallel"), world_size)
    try:
        from parallel.dims import ParallelDims

        dims = ParallelDims.from_config(parallel, world_size, model_cfg=model_cfg, seq_len=d.seq_len)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    batch_plan(cfg, dims.dp_degree)


def _to_object(node: Any, key: str) -> Any:
    """The dataclass behind a config section (running its __post_init__ checks), errors as ConfigError."""
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_object(node)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - e.g. a missing mandatory value
        raise ConfigError(f"{key}: {exc}") from exc


def _shared_run_id() -> Optional[str]:
    """An id every rank of one launch sees alike: a Slurm job id, or torchrun's rendezvous run id."""
    if os.environ.get("LOOM_RUN_ID"):
        return os.environ["LOOM_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        return f"job{os.environ['SLURM_JOB_ID']}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id and run_id != "none":
        return run_id
    return None


@functools.lru_cache(maxsize=None)
def default_run_dir(name: str) -> str:
    """outputs/<name>-<stamp>: a timestamp for one process, the shared launch id when several ranks start.

    Cached so that Hydra's run dir and the trainer's (resolved separately) agree to the second.
    """
    shared = _shared_run_id()
    if world_size_from_env() > 1:
        if shared is None:
            raise ConfigError(
                f"{world_size_from_env()} processes but no shared run id (no SLURM_JOB_ID / TORCHELASTIC_RUN_ID): "
                f"set trainer.run_dir=<path> so every rank writes to the same run directory"
            )
        stamp = shared
    elif os.environ.get("SLURM_JOB_ID"):
        stamp = f"job{os.environ['SLURM_JOB_ID']}"  # a requeued job finds its own run dir and resumes
    else:
        import time

        stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"outputs/{name}-{stamp}"
