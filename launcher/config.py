"""The training configuration's one source: schema, default and a one-line doc of every key.

These dataclasses are Hydra structured configs (registered as `train_schema`), so Hydra rejects a misspelt key or
a wrong type while composing. The YAML files under configs/ hold only what choosing them changes (a test fails if
one repeats a default here); `python -m launcher.train --cfg job` prints every resolved key. What types cannot
express (ranges, choices, combinations, the layout) is checked by launcher/validation.py.

Choice lists are defined here once and imported by the code that implements them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from cluster.config import ClusterConfig
from model.config import ModelConfig
from model.dtypes import canonical_precision
from parallel.config import ParallelConfig

DATA_SOURCES = ("embedded", "packed", "synthetic", "preference")
OPTIMIZERS = ("adamw", "muon")
MUON_LR_RULES = ("match_rms_adamw", "original")
SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "cosine", "sqrt")
DEVICES = ("auto", "cpu", "cuda")
RESUME_MODES = ("auto", "never")
SPIKE_ACTIONS = ("off", "log", "skip", "rollback")  # launcher/spikes.py
WANDB_MODES = ("auto", "online", "offline", "disabled")
ESTIMATE_FORMATS = ("table", "json")
OBJECTIVES = ("lm", "dpo")
DPO_LOSS_TYPES = ("sigmoid", "ipo")  # launcher/dpo.py
DPO_REFERENCES = ("frozen_copy", "adapters_off")


@dataclass
class DataConfig:
    # DATA_SOURCES: generated corpus built on first use | shards at `path` | random tokens | preference shards at
    # `path` (data_pipeline/preference_format.py; trainer.objective=dpo)
    name: str = "embedded"
    path: Optional[str] = None  # directory of packed shards (data=packed) or preference shards (data=preference)
    cache_dir: str = ".cache/loom/embedded"  # where data=embedded builds its shards
    seq_len: int = 128  # tokens per training sequence (each sample reads seq_len + 1 tokens)
    val_fraction: float = 0.05  # tail of the token stream held out for evaluation
    seed: Optional[int] = None  # shuffle seed; None: trainer.seed
    # [start, end) ranges of the sample stream never trained on (e.g. a batch a loss spike flagged: its
    # spike/sample_start and spike/sample_end); reaching a range's start, the data jumps to its end.
    skip_samples: list[list[int]] = field(default_factory=list)


@dataclass
class MuonConfig:
    """optim.muon (launcher/muon.py): Muon for the hidden matrices when optim.name=muon; AdamW (the other optim
    keys) for embeddings, the output head, norms, biases, vectors and whatever `adamw_params` names."""

    lr: Optional[float] = None  # Muon's peak lr; None: optim.lr (right for lr_rule=match_rms_adamw)
    lr_rule: str = "match_rms_adamw"  # MUON_LR_RULES: update RMS matched to AdamW's | Keller Jordan's (lr ~0.02)
    momentum: float = 0.95  # momentum of the gradient before orthogonalisation
    nesterov: bool = True  # orthogonalise the Nesterov update (g + momentum (B - g)) rather than the buffer B
    ns_steps: int = 5  # Newton-Schulz iterations
    ns_dtype: str = "fp32"  # model.dtypes precision of the iteration (bf16 is cheaper on GPU; torch's choice)
    adamw_params: list[str] = field(default_factory=lambda: ["output.weight"])  # names (fnmatch) kept on AdamW
    qk_clip_tau: float = 0.0  # QK-clip (MuonClip): rescale W_q/W_k of heads whose max logit exceeds this; 0: off

    def __post_init__(self) -> None:
        self.ns_dtype = canonical_precision(self.ns_dtype, "optim.muon.ns_dtype")


@dataclass
class OptimConfig:
    name: str = "adamw"  # OPTIMIZERS
    lr: float = 3e-3  # peak learning rate
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled (AdamW)
    decay_norms_and_biases: bool = False  # decay 1-D parameters (norm gains, biases) too
    decay_embeddings: bool = False  # decay embedding rows too
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    fused: Optional[bool] = None  # None: fused AdamW on CUDA, foreach elsewhere
    muon: MuonConfig = field(default_factory=MuonConfig)  # used when name=muon


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # SCHEDULES
    warmup_steps: int = 10  # linear warmup from peak/warmup_steps to the peak
    min_lr_ratio: float = 0.1  # final lr / peak lr (cosine and wsd)
    decay_fraction: float = 0.2  # wsd: fraction of max_steps spent in the final annealing phase
    decay_shape: str = "linear"  # wsd annealing shape (DECAY_SHAPES; sqrt is 1 - sqrt)


@dataclass
class BatchRampConfig:
    """trainer.batch_ramp (launcher/batch_ramp.py): the global batch starts at `start` sequences and grows by
    `increment` in equal stages to the full global batch over the first `tokens` training tokens. All 0: none."""

    start: int = 0  # sequences per step at the start of the run (a multiple of micro_batch_size x dp ranks)
    increment: int = 0  # sequences added at each stage (the same multiple)
    tokens: int = 0  # training tokens over which the batch reaches trainer.global_batch_size


@dataclass
class SpikeConfig:
    """Loss-spike handling (launcher/spikes.py): a step is a spike when its loss or gradient norm exceeds the mean
    plus z standard deviations of the last `window` unflagged steps."""

    action: str = "off"  # SPIKE_ACTIONS: off | log (record it) | skip (drop its update) | rollback (to a checkpoint)
    window: int = 50  # steps in the running mean and standard deviation; no step is flagged before it is full
    z: float = 6.0  # standard deviations above the running mean that flag a spike
    grad_norm: bool = True  # watch the gradient norm too (before clipping), not only the loss


@dataclass
class TrainerConfig:
    name: str = "loom"  # run name: the default run dir is outputs/<name>-<timestamp or job id>
    # Decided once for all ranks (launcher/run_dir.py); under Hydra multirun each job gets <sweep dir>/<job number>.
    run_dir: Optional[str] = "${loom_run_dir:${trainer.name}}"
    max_steps: int = 150  # optimizer steps
    seed: int = 1337  # model init and (unless data.seed) data order
    global_batch_size: Optional[int] = 16  # sequences per optimizer step, over all data-parallel ranks
    global_batch_tokens: Optional[int] = None  # alternative to global_batch_size: tokens per step
    micro_batch_size: int = 8  # sequences per forward/backward on one rank
    batch_ramp: BatchRampConfig = field(default_factory=BatchRampConfig)  # a growing global batch (default: none)
    precision: str = "fp32"  # model.dtypes.PRECISIONS: fp32 | bf16 (autocast) | fp16 (autocast + loss scaling)
    device: str = "auto"  # DEVICES
    log_every: int = 10  # steps between logged metrics
    eval_every: int = 50  # 0 disables periodic evaluation (a final one still runs when eval_batches > 0)
    eval_batches: int = 4  # micro batches of held-out data per evaluation (over all dp ranks)
    sample_every: int = 0  # 0: sample only at the end; < 0 never
    sample_prompt: str = "The"  # prompt of the logged greedy sample
    sample_tokens: int = 32  # new tokens in the logged sample
    checkpoint_every: int = 50  # 0 disables periodic checkpoints (one is still written at the end)
    checkpoint_async: bool = False  # write checkpoints in the background (the loop waits only for a host copy)
    keep_checkpoints: int = 2  # newest complete checkpoints kept; 0 keeps all
    resume: str = "auto"  # RESUME_MODES: auto continues the run in run_dir from its newest good checkpoint
    # Keys a resumed run may change although they break an exact resume (e.g. [optim.lr]); others are refused.
    resume_allow: list[str] = field(default_factory=list)
    init_from: Optional[str] = None  # checkpoint or run dir whose model weights start this run
    dist_timeout_s: int = 600  # process-group timeout
    # A rank without heartbeat this long is lost: the others name it and exit (None: min(60, dist_timeout_s / 4);
    # 0: no watchdog).
    peer_timeout_s: Optional[int] = None
    # No rank progresses this long: stacks dumped, the stalled rank named, exit (None: 0.8 x dist_timeout_s; 0: off).
    hang_timeout_s: Optional[int] = None
    skip_nonfinite_steps: int = 0  # drop the update of up to N non-finite steps (a host sync per step); 0: stop
    spike: SpikeConfig = field(default_factory=SpikeConfig)  # loss-spike detection and handling (default: off)
    # Per-layer-group gradient norms, update/weight ratios, max attention logits and MoE router entropy at log steps
    layer_health: bool = False
    progress_bar: bool = True  # a tqdm bar on rank 0
    objective: str = "lm"  # OBJECTIVES: next-token loss | dpo (preference pairs, data=preference, the `dpo` keys)

    def __post_init__(self) -> None:
        self.precision = canonical_precision(self.precision, "trainer.precision")


@dataclass
class DPOConfig:
    """trainer.objective=dpo (launcher/dpo.py, launcher/train_modules/dpo.py): Direct Preference Optimisation."""

    beta: float = 0.1  # strength of the pull towards the reference (TRL's beta)
    loss_type: str = "sigmoid"  # DPO_LOSS_TYPES: sigmoid (DPO) | ipo (length-normalised, as TRL)
    # DPO_REFERENCES: frozen_copy (the initial weights: trainer.init_from's, else the seed's, held frozen) |
    # adapters_off (the trained model with its LoRA adapters disabled; needs model.lora, costs no extra memory)
    reference: str = "frozen_copy"


@dataclass
class EvalTasksConfig:
    """Downstream evaluation on lm-eval YAML tasks (evaluation/): the keys the training loop's `eval` group and the
    offline command (`python -m launcher.evaluate`, launcher/evaluation.py's EvalSettings) share."""

    tasks: list[str] = field(default_factory=list)  # task, group or tag names found in task_dirs; [] turns it off
    task_dirs: list[str] = field(default_factory=list)  # directories of lm-eval task YAML (searched recursively)
    limit: Optional[float] = None  # documents per task: N >= 1, or a fraction < 1 (lm-eval's --limit)
    batch_size: int = 8  # sequences per scoring forward (pipeline parallel: the training per-rank batch)
    max_length: Optional[int] = None  # longest scored sequence; None: model.max_seq_len (HFLM's max_length)
    bootstrap_iters: int = 100000  # lm-eval's default for the stderr of non-mean metrics


@dataclass
class EvalConfig(EvalTasksConfig):
    """The training loop's downstream evaluation (launcher/callbacks/downstream_eval.py): every `every` steps and
    at the last step, logged as eval/<task>/<metric>."""

    every: int = 0  # steps between evaluations; 0: only at the last step (when tasks are given)
    save_results: bool = True  # rank 0 writes <run_dir>/eval/step_<N>/results.json (lm-eval's layout)


@dataclass
class WandbConfig:
    mode: str = "auto"  # WANDB_MODES: auto is online with WANDB_API_KEY, else offline
    project: str = "loom"
    entity: Optional[str] = None


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    plot: bool = True  # loss/lr PNG in the run dir at the end
    level: str = "INFO"  # Python logging level of rank 0


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # downstream tasks in the loop (eval.tasks=[...])
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # where `launcher.submit` runs the job (Slurm)
    dpo: DPOConfig = field(default_factory=DPOConfig)  # preference tuning, with trainer.objective=dpo


@dataclass
class EstimateConfig(TrainConfig):
    """`python -m launcher.estimate` (configs/estimate.yaml): the training config, every key and override of
    `launcher.train`, plus what only the estimate needs (parallel/estimate.py sizes the run)."""

    num_gpus: Optional[int] = None  # GPUs to size for; None: the product of the parallel degrees (none may be -1)
    gpu: str = "H100 SXM"  # device name for model.peak_flops.peak_flops; an unknown name gives no time estimate
    peak_flops: Optional[float] = None  # dense bf16 FLOP/s of one GPU; None: the figure listed for `gpu`
    tokens: Optional[float] = None  # token budget to train; None: 20 tokens per parameter (Chinchilla)
    mfu: float = 0.4  # model FLOPs utilisation assumed for the time estimate
    format: str = "table"  # ESTIMATE_FORMATS


# Choice keys checked by launcher/validation.py (model.* and parallel.* choices are checked by their own configs).
CHOICES = {
    "data.name": DATA_SOURCES,
    "optim.name": OPTIMIZERS,
    "optim.muon.lr_rule": MUON_LR_RULES,
    "schedule.name": SCHEDULES,
    "schedule.decay_shape": DECAY_SHAPES,
    "trainer.device": DEVICES,
    "trainer.resume": RESUME_MODES,
    "trainer.spike.action": SPIKE_ACTIONS,
    "logging.wandb.mode": WANDB_MODES,
    "trainer.objective": OBJECTIVES,
    "dpo.loss_type": DPO_LOSS_TYPES,
    "dpo.reference": DPO_REFERENCES,
}


def register_configs(schema: type = TrainConfig) -> None:
    """Register the schema configs/train.yaml composes onto: TrainConfig, or a subclass of it for a command that
    composes train.yaml with keys of its own (launcher.estimate registers EstimateConfig)."""
    ConfigStore.instance().store(name="train_schema", node=schema)
