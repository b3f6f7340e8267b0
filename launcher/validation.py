"""The one validation pass of a training config, before any process group, model or data exists.

`validate(cfg, world_size)` turns the composed Hydra config into the typed `TrainConfig` once (running the
dataclasses' own checks: model invariants, dtype spellings), checks what types cannot express (ranges, choices,
files that must exist), asks `ParallelDims.from_config` for every layout rule (divisibility, pipeline schedules,
what pipeline/tensor/expert/context parallel cannot carry, DeepSpeed's limits, fp16 under pp) and works out the
batch plan. It returns the `RunPlan` the trainer then runs, so what was checked is exactly what runs. Any problem
is a ConfigError naming the key and the fix. Nothing here imports torch, so a bad config fails in about a second.

Downstream tasks (eval.tasks) are loaded here too (evaluation/ is torch-free): a missing data file, an unknown
task, a template field the data lacks or an empty choice list stops the launch with the task loader's message
(file and field named). What the layout cannot evaluate is decided here as well: pipeline parallel cannot generate,
so its generation tasks are left out with a note in the plan (printed before training starts) and the
log-likelihood tasks still run; every other layout scores every task. Scoring batches are padded to the width the
layout needs (`scoring_width_multiple`), which must stay within model.max_seq_len.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from launcher.batch_ramp import GlobalBatchSchedule, ramp_problem
from launcher.config import CHOICES, EvalConfig, EvalTasksConfig, TrainConfig
from model.config import MAX_SEQ_LEN_BOUNDED
from parallel.dims import ParallelDims


class ConfigError(ValueError):
    """A training config that cannot run; the message names the key and how to fix it."""


@dataclass(frozen=True)
class RunPlan:
    """A validated config and what follows from it on this world size."""

    cfg: TrainConfig
    dims: ParallelDims
    global_batch: int  # sequences per optimizer step (after the batch ramp, if any)
    grad_accum: int  # micro batches per rank per step (torch layouts and ZeRO; after the ramp)
    eval_tasks: tuple = ()  # eval.tasks loaded (evaluation.tasks Task/Group), those this layout can run
    notes: tuple[str, ...] = ()  # what the run leaves out and why, printed before training starts

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.cfg.data.seq_len

    @property
    def batch_schedule(self) -> GlobalBatchSchedule:
        """The global batch of every step (trainer.batch_ramp; without one, `global_batch` throughout)."""
        ramp = self.cfg.trainer.batch_ramp
        return GlobalBatchSchedule(self.global_batch, self.cfg.data.seq_len, ramp.start, ramp.increment, ramp.tokens)

    @property
    def rank_batch(self) -> int:
        """Sequences each data-parallel rank reads per step."""
        return self.global_batch // self.dims.dp_degree


def validate(cfg: Any, world_size: int) -> RunPlan:
    """The RunPlan of `cfg` (a composed DictConfig, or a TrainConfig) on `world_size` processes, or ConfigError."""
    config = to_train_config(cfg)
    _check_choices(config)
    _check_trainer(config)
    _check_schedule(config)
    _check_optim(config)
    _check_data(config)
    _check_lora(config)
    try:
        dims = ParallelDims.from_config(
            config.parallel,
            world_size,
            model_cfg=config.model,
            seq_len=config.data.seq_len,
            precision=config.trainer.precision,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    _check_objective(config, dims)
    global_batch, grad_accum = batch_plan(config, dims)
    eval_tasks, notes = _check_eval(config, dims)
    return RunPlan(config, dims, global_batch, grad_accum, eval_tasks, notes)


def to_train_config(cfg: Any) -> TrainConfig:
    """The typed TrainConfig behind a composed config (interpolations resolved, __post_init__ checks run)."""
    if isinstance(cfg, TrainConfig):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_object(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except OmegaConfBaseException as exc:  # e.g. a missing mandatory value: the message names the key
        raise ConfigError(str(exc).splitlines()[0]) from exc


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_choices(cfg: TrainConfig) -> None:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")


def _check_trainer(cfg: TrainConfig) -> None:
    t = cfg.trainer
    for key in ("max_steps", "log_every", "dist_timeout_s"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"trainer.{key} must be positive, got {getattr(t, key)}")
    for key in (
        "eval_every",
        "eval_batches",
        "checkpoint_every",
        "keep_checkpoints",
        "sample_tokens",
        "skip_nonfinite_steps",
    ):
        if getattr(t, key) < 0:
            raise ConfigError(f"trainer.{key} must be >= 0 (0 disables), got {getattr(t, key)}")
    _check_watchdog(t)
    if t.init_from is not None and not Path(t.init_from).exists():
        raise ConfigError(f"trainer.init_from={t.init_from}: no such checkpoint or run directory")
    if t.skip_nonfinite_steps and cfg.parallel.engine == "deepspeed":
        raise ConfigError(
            "trainer.skip_nonfinite_steps needs a torch layout: DeepSpeed's engine owns the step (its "
            "fp16 loss scaler skips overflowing steps itself); set it to 0"
        )
    _check_spike(cfg)
    if t.layer_health and cfg.parallel.engine == "deepspeed":
        raise ConfigError(
            "trainer.layer_health needs a torch layout: DeepSpeed's engine keeps gradients and the update in its "
            "own partitioned buffers; set trainer.layer_health=false"
        )
    if not t.run_dir:
        raise ConfigError("trainer.run_dir is empty: give a directory, or leave the default (outputs/<name>-<id>)")


def watchdog_timeouts(t) -> tuple[int, int]:
    """(trainer.peer_timeout_s, trainer.hang_timeout_s) with their defaults worked out from dist_timeout_s."""
    peer = t.peer_timeout_s if t.peer_timeout_s is not None else min(60, t.dist_timeout_s // 4)
    hang = t.hang_timeout_s if t.hang_timeout_s is not None else t.dist_timeout_s * 4 // 5
    return peer, hang


def _check_watchdog(t) -> None:
    """The peer watchdog (launcher/watchdog.py) must speak before the collective timeout does, or a hang ends in
    the process group's timeout error with no stacks and no rank named."""
    for key in ("peer_timeout_s", "hang_timeout_s"):
        value = getattr(t, key)
        if value is not None and value < 0:
            raise ConfigError(f"trainer.{key}={value} must be >= 0 (0 disables; null: worked out from dist_timeout_s)")
    peer, hang = watchdog_timeouts(t)
    if 0 < peer < 5:
        raise ConfigError(
            f"trainer.peer_timeout_s={peer}: too short to tell a busy rank from a lost one; use >= 5 (0: no watchdog)"
            + ("" if t.peer_timeout_s is not None else f" or raise trainer.dist_timeout_s={t.dist_timeout_s}")
        )
    for key, value in (("peer_timeout_s", peer), ("hang_timeout_s", hang)):
        if value >= t.dist_timeout_s:
            raise ConfigError(
                f"trainer.{key}={value} must be below trainer.dist_timeout_s={t.dist_timeout_s}: a lost or stalled "
                f"rank would otherwise surface as a collective timeout naming nobody; lower it (0: off) or raise "
                f"trainer.dist_timeout_s"
            )
    if hang and not peer:
        raise ConfigError(
            "trainer.hang_timeout_s needs the watchdog's heartbeats: set trainer.peer_timeout_s > 0, or "
            "trainer.hang_timeout_s=0"
        )


def _check_spike(cfg: TrainConfig) -> None:
    s = cfg.trainer.spike
    if s.window < 2:
        raise ConfigError(f"trainer.spike.window={s.window} must be >= 2 (steps in the running mean and deviation)")
    if s.z <= 0:
        raise ConfigError(f"trainer.spike.z={s.z} must be positive (standard deviations above the running mean)")
    if s.action != "off" and cfg.parallel.engine == "deepspeed":
        raise ConfigError(
            f"trainer.spike.action={s.action} needs a torch layout: DeepSpeed's engine owns the step, so the update "
            f"cannot be judged before it is applied; set trainer.spike.action=off"
        )


def _check_schedule(cfg: TrainConfig) -> None:
    s, max_steps = cfg.schedule, cfg.trainer.max_steps
    if s.warmup_steps < 0:
        raise ConfigError(f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    if 0 < max_steps <= s.warmup_steps:
        raise ConfigError(
            f"schedule.warmup_steps={s.warmup_steps} is not shorter than trainer.max_steps={max_steps}: "
            f"lower the warmup or train longer"
        )
    if not 0.0 <= s.min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio={s.min_lr_ratio} must be in [0, 1]")
    if s.name == "wsd":
        if not 0.0 < s.decay_fraction <= 1.0:
            raise ConfigError(f"schedule.decay_fraction={s.decay_fraction} must be in (0, 1] for schedule=wsd")
        decay_steps = math.ceil(s.decay_fraction * max_steps)
        if s.warmup_steps + decay_steps > max_steps:
            raise ConfigError(
                f"schedule.warmup_steps={s.warmup_steps} + decay phase {decay_steps} steps "
                f"(schedule.decay_fraction={s.decay_fraction} x trainer.max_steps={max_steps}) exceed the run: "
                f"lower one of them"
            )


def _check_optim(cfg: TrainConfig) -> None:
    o = cfg.optim
    if o.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {o.lr}")
    if not (0.0 <= o.beta1 < 1.0 and 0.0 <= o.beta2 < 1.0):
        raise ConfigError(f"optim.beta1={o.beta1} and optim.beta2={o.beta2} must be in [0, 1)")
    if o.weight_decay < 0 or o.grad_clip < 0 or o.eps <= 0:
        raise ConfigError("optim.weight_decay and optim.grad_clip must be >= 0 and optim.eps > 0")
    if o.name == "muon":
        _check_muon(cfg)
    elif o.muon.qk_clip_tau > 0:
        raise ConfigError(
            f"optim.muon.qk_clip_tau={o.muon.qk_clip_tau} is read with optim=muon only (optim.name={o.name}): "
            "add optim=muon or drop the key"
        )


def _check_muon(cfg: TrainConfig) -> None:
    m, p = cfg.optim.muon, cfg.parallel
    if m.lr is not None and m.lr <= 0:
        raise ConfigError(f"optim.muon.lr must be positive (or null: optim.lr), got {m.lr}")
    if not 0.0 <= m.momentum < 1.0:
        raise ConfigError(f"optim.muon.momentum={m.momentum} must be in [0, 1)")
    if m.ns_steps < 1:
        raise ConfigError(f"optim.muon.ns_steps={m.ns_steps} must be >= 1")
    if m.qk_clip_tau < 0:
        raise ConfigError(f"optim.muon.qk_clip_tau={m.qk_clip_tau} must be >= 0 (0 turns QK-clip off)")
    if p.engine == "deepspeed":
        raise ConfigError(
            "optim.name=muon runs on the torch layouts only: DeepSpeed's ZeRO engine owns its optimizer and shards "
            "it by flat partitions, which split the matrices Muon orthogonalises whole; use parallel.engine=torch "
            "(FSDP shards like ZeRO-3) or optim=adamw"
        )
    if cfg.model.lora.enabled:
        raise ConfigError(
            "optim=muon with model.lora: the adapters are low-rank factors, whose orthogonalised update is not "
            "what either method was made for (and the estimate does not model it); use optim=adamw with LoRA"
        )
    if m.qk_clip_tau > 0:
        _check_qk_clip(cfg)


def _check_qk_clip(cfg: TrainConfig) -> None:
    """QK-clip rescales each head's rows of W_q and W_k from the max logit the attention recorded; the layouts and
    attention kinds where that is not done (or would not bound the logits) are refused here."""
    p, model = cfg.parallel, cfg.model
    if p.tp > 1 or p.cp > 1 or p.pp > 1:
        raise ConfigError(
            f"optim.muon.qk_clip_tau>0 runs on one process, DDP, FSDP/HSDP and EP layouts; parallel.tp={p.tp}, "
            f"cp={p.cp}, pp={p.pp} split heads, sequences or layers across ranks (not implemented): set those to 1 "
            "or optim.muon.qk_clip_tau=0"
        )
    if model.mla is not None:
        raise ConfigError("optim.muon.qk_clip_tau>0 is implemented for MHA/GQA attention, not MLA (model.mla)")
    if model.qk_norm:
        raise ConfigError(
            "optim.muon.qk_clip_tau>0 with model.qk_norm=true: the norm after W_q/W_k undoes their rescaling (and "
            "already bounds the logits); turn one of them off"
        )
    if model.attn_logit_softcap is not None:
        raise ConfigError("optim.muon.qk_clip_tau>0 with model.attn_logit_softcap: the softcap already bounds logits")


def _check_lora(cfg: TrainConfig) -> None:
    """model.lora: targets the architecture has, on a layout that trains adapters (torch engine, no float8)."""
    from model.counting import lora_missing_targets

    lora = cfg.model.lora
    if not lora.enabled:
        return
    missing = lora_missing_targets(cfg.model)
    if missing:
        raise ConfigError(
            f"model.lora.targets: {missing} do not exist in model {cfg.model.name!r} (latent attention has no "
            f"separate k/v, GELU MLPs no gate, routed MoE experts take no adapters): leave them out"
        )
    if cfg.parallel.engine == "deepspeed":
        raise ConfigError(
            "model.lora with parallel.engine=deepspeed: ZeRO's checkpoints gather fp32 master weights of every "
            "parameter, and the frozen base has none; use parallel=fsdp (sharded like ZeRO-3) or ddp"
        )
    if cfg.parallel.float8 != "none":
        raise ConfigError(
            "model.lora with parallel.float8: float8 replaces the adapted Linear modules; set parallel.float8=none"
        )


def _check_objective(cfg: TrainConfig, dims: ParallelDims) -> None:
    """trainer.objective=dpo: preference data, a reference there is, and a layout the DPO step supports (one
    process, DDP, FSDP/HSDP: whole sequences, whole vocabulary, one module)."""
    dpo = cfg.trainer.objective == "dpo"
    if dpo != (cfg.data.name == "preference"):
        raise ConfigError(
            f"trainer.objective={cfg.trainer.objective} with data={cfg.data.name}: DPO trains on preference pairs "
            "and only DPO does; set both trainer.objective=dpo and data=preference, or neither"
        )
    if not dpo:
        return
    if cfg.dpo.beta <= 0:
        raise ConfigError(f"dpo.beta={cfg.dpo.beta} must be positive (TRL's default: 0.1)")
    if cfg.dpo.reference == "adapters_off" and not cfg.model.lora.enabled:
        raise ConfigError(
            "dpo.reference=adapters_off needs LoRA adapters (model.lora.rank > 0): without them the model is its "
            "own reference; use dpo.reference=frozen_copy"
        )
    unsupported = {
        "parallel.pp": dims.pp > 1,
        "parallel.cp": dims.cp > 1,
        "parallel.tp": dims.tp > 1,
        "parallel.ep": dims.ep > 1,
        "parallel.engine": cfg.parallel.engine != "torch",
        "model.moe": cfg.model.moe is not None,
        "model.mtp_depth": cfg.model.mtp_depth > 0,
    }
    for key, present in unsupported.items():
        if present:
            raise ConfigError(
                f"trainer.objective=dpo does not support {key}={_get(cfg, key)} (DPO runs on one process, DDP or "
                f"FSDP/HSDP with dense models, no auxiliary losses): set {key} to its default"
            )


def _check_data(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.seq_len <= 0:
        raise ConfigError(f"data.seq_len must be positive, got {d.seq_len}")
    if d.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"data.seq_len={d.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}: lower data.seq_len or "
            f"raise model.max_seq_len"
        )
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    for entry in d.skip_samples:
        if len(entry) != 2 or not 0 <= entry[0] < entry[1]:
            raise ConfigError(
                f"data.skip_samples entry {list(entry)} must be [start, end) with 0 <= start < end (sample "
                f"positions, as spike/sample_start and spike/sample_end log them)"
            )
    if d.name == "preference":
        if not d.path or not Path(d.path).is_dir():
            raise ConfigError(
                f"data=preference needs data.path=<directory of preference shards> (got {d.path}): write them with "
                "`python -m data_pipeline preference input=... output=... tokenizer=...`"
            )
    if d.name == "packed":
        if not d.path:
            raise ConfigError("data=packed needs data.path=<directory of packed shards> (it is null)")
        path = Path(d.path)
        if not path.is_dir():
            raise ConfigError(f"data.path={d.path}: no such directory; point it at the data pipeline's shard output")
        from data_pipeline.formats import list_shards

        shards = list_shards(path)
        if not shards:
            raise ConfigError(f"data.path={d.path}: no packed shards (*.json headers) in it; run the tokenize step")
        if cfg.parallel.pp > 1 and _has_loss_mask(shards[0]):  # all shards of a dataset or none
            raise ConfigError(
                f"data.path={d.path}: the shards carry a loss mask (supervised fine-tuning), which pipeline "
                f"parallel's schedule does not weigh by counted tokens: train them with parallel.pp=1"
            )


def _has_loss_mask(header: Path) -> bool:
    """The shard header says its shard carries a loss mask (an unreadable header is opening the data's error)."""
    try:
        return bool(json.loads(header.read_text()).get("loss_mask"))
    except (OSError, ValueError, AttributeError):
        return False


def check_eval_keys(e: EvalTasksConfig, prefix: str = "eval") -> None:
    """Ranges of the evaluation keys the loop and the offline command share (and eval.every in the loop)."""
    if e.batch_size < 1:
        raise ConfigError(f"{prefix}.batch_size={e.batch_size}: must be >= 1")
    if e.limit is not None and e.limit <= 0:
        raise ConfigError(f"{prefix}.limit={e.limit}: must be > 0 (documents, or a fraction < 1)")
    if e.max_length is not None and e.max_length < 2:
        raise ConfigError(f"{prefix}.max_length={e.max_length}: must be >= 2 (or null: the model's max_seq_len)")
    if e.bootstrap_iters < 0:
        raise ConfigError(f"{prefix}.bootstrap_iters={e.bootstrap_iters}: must be >= 0")
    if isinstance(e, EvalConfig) and e.every < 0:
        raise ConfigError(f"{prefix}.every={e.every}: must be >= 0 (0: only at the last step)")


def generation_blocked(dims: ParallelDims) -> Optional[str]:
    """Why this layout cannot generate text, or None when it can: the one rule the text sample and downstream
    generation tasks share. Tensor and context parallel, whose sequence-sharded forward cannot decode one token
    through a KV cache, generate by full forwards of the growing sequences (TrainModule.generate_greedy); the
    pipeline's stages take only the training batch's shape, and each holds part of the model."""
    if dims.pp > 1:
        return "pipeline parallel (parallel.pp > 1): each stage holds part of the model"
    return None


def scoring_width_multiple(dims: ParallelDims) -> int:
    """What the width of a scoring forward (downstream evaluation, generation by full forwards) must divide by,
    as training's sequence length does: tp under tensor (sequence) parallel; with context parallel the cp ranks'
    chunks (2*cp of them with cp_load_balance), each rank's share then divisible by tp. Pipeline parallel pads to
    the training shape instead."""
    multiple = dims.tp
    if dims.cp > 1:
        pieces = 2 * dims.cp if dims.cfg.cp_load_balance else dims.cp
        multiple = math.lcm(pieces, dims.cp * dims.tp)
    return multiple


def _check_eval(cfg: TrainConfig, dims: ParallelDims) -> tuple[tuple, tuple[str, ...]]:
    """(the downstream tasks this layout runs, notes on what it leaves out); ConfigError on bad keys or tasks."""
    e = cfg.eval
    check_eval_keys(e)
    if not e.tasks:
        return (), ()
    if not e.task_dirs:
        raise ConfigError("eval.tasks is set but eval.task_dirs is empty: give the directories of the task YAML")
    if cfg.data.name == "synthetic":
        raise ConfigError("eval.tasks needs data with a tokenizer (data=packed or data=embedded), not data=synthetic")
    max_length = e.max_length or cfg.model.max_seq_len
    if max_length > cfg.model.max_seq_len:
        raise ConfigError(f"eval.max_length={e.max_length} exceeds model.max_seq_len={cfg.model.max_seq_len}")
    multiple = scoring_width_multiple(dims)
    padded = -(-max_length // multiple) * multiple
    if dims.pp == 1 and padded > cfg.model.max_seq_len and cfg.model.pos_embedding in MAX_SEQ_LEN_BOUNDED:
        raise ConfigError(
            f"eval.max_length={max_length} (null: model.max_seq_len): this layout pads scoring batches to a "
            f"multiple of {multiple} tokens (parallel.tp={dims.tp}, parallel.cp={dims.cp}, cp_load_balance="
            f"{dims.cfg.cp_load_balance}), {padded}, past model.max_seq_len={cfg.model.max_seq_len}: set "
            f"eval.max_length<={cfg.model.max_seq_len // multiple * multiple}"
        )
    if dims.pp > 1 and max_length > cfg.data.seq_len:
        raise ConfigError(
            f"eval.max_length={max_length} (null: model.max_seq_len) exceeds data.seq_len={cfg.data.seq_len}: under "
            f"pipeline parallel scoring batches have the training shape; set eval.max_length<={cfg.data.seq_len}"
        )
    from evaluation.errors import TaskInputError
    from evaluation.runner import leaf_tasks
    from evaluation.tasks import Group, load_tasks

    try:
        tasks = load_tasks(list(e.tasks), list(e.task_dirs))
    except TaskInputError as exc:
        raise ConfigError(f"eval.tasks: {exc}") from exc
    why_not = generation_blocked(dims)
    generating = [t.name for t in leaf_tasks(tasks) if t.output_type == "generate_until"]
    for task in leaf_tasks(tasks):
        new_tokens = int(task.generation.get("max_gen_toks", 0)) if task.output_type == "generate_until" else 0
        if why_not is None and new_tokens >= max_length:
            raise ConfigError(
                f"{task.where}: generation_kwargs max_gen_toks={new_tokens} leaves no room for a context in "
                f"eval.max_length={max_length} (null: model.max_seq_len): lower max_gen_toks or raise eval.max_length"
            )
    if why_not is None or not generating:
        return tuple(tasks), ()
    kept = []
    for item in tasks:
        leaves = item.leaf_tasks() if isinstance(item, Group) else [item]
        kinds = {t.output_type == "generate_until" for t in leaves}
        if kinds == {True, False}:
            raise ConfigError(
                f"eval.tasks: group {item.name!r} mixes generation tasks with others, and this layout cannot "
                f"generate ({why_not}): name its log-likelihood tasks one by one"
            )
        if kinds == {False}:
            kept.append(item)
    note = f"eval: generation tasks {generating} are skipped under {why_not}; the log-likelihood tasks still run"
    return tuple(kept), (note,)


def batch_plan(cfg: TrainConfig, dims: ParallelDims) -> tuple[int, int]:
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
        global_batch, key = t.global_batch_tokens // seq_len, "trainer.global_batch_tokens"
    else:
        global_batch, key = t.global_batch_size, "trainer.global_batch_size"
    if global_batch <= 0:
        raise ConfigError(f"{key} must be positive, got {global_batch}")
    if t.micro_batch_size <= 0:
        raise ConfigError(f"trainer.micro_batch_size must be positive, got {t.micro_batch_size}")
    per_step = t.micro_batch_size * dims.dp_degree
    if global_batch % per_step != 0:
        raise ConfigError(
            f"{key} gives {global_batch} sequences per step, not divisible by trainer.micro_batch_size="
            f"{t.micro_batch_size} x {dims.dp_degree} data-parallel ranks = {per_step}: make the global batch a "
            f"multiple of {per_step} or change trainer.micro_batch_size"
        )
    if dims.pp > 1:  # the schedule cuts each rank's batch into parallel.pp_microbatches microbatches
        rank_batch, micro = global_batch // dims.dp_degree, dims.cfg.pp_microbatches
        if rank_batch % micro != 0:
            raise ConfigError(
                f"parallel.pp_microbatches={micro} does not divide each data-parallel rank's batch of {rank_batch} "
                f"sequences ({key}={global_batch} over {dims.dp_degree} rank(s)): change one of them"
            )
    ramp = t.batch_ramp
    problem = ramp_problem(ramp.start, ramp.increment, ramp.tokens, global_batch, per_step)
    if problem is not None:
        raise ConfigError(problem)
    if ramp.start and (dims.pp > 1 or dims.cfg.engine == "deepspeed"):
        raise ConfigError(
            "trainer.batch_ramp needs a torch layout without pipeline parallel: the pipeline schedule fixes its "
            "microbatch shapes and DeepSpeed fixes its accumulation steps at the start; remove the ramp or "
            "parallel.pp / parallel.engine=deepspeed"
        )
    return global_batch, global_batch // per_step
