"""Memory per GPU and time to train of a training layout, from the configs alone: no model, no process group.

It sizes the run `launcher.train` would start: the model, the `parallel.*` layout as `ParallelDims.from_config`
validated and resolved it (the one set of layout rules), the trainer's batch and precision and data.seq_len
(`TrainingRun`). Pipeline stages hold the layers parallel/stage_plan.py gives them, the split training builds, so
an uneven model (dense first layers, MoE later ones) is sized as it will run. Parameter and FLOP counts are
model/counting.py's; the command is `python -m launcher.estimate`.

Memory per GPU (`estimate_memory`) is the worst pipeline stage under the layout, as training holds it:
- engine=torch keeps fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes per parameter before
  sharding; trainer.precision=bf16/fp16 is autocast and changes only activations). FSDP2 shards all three over
  dp_shard x cp (HSDP replicates that over dp_replicate) and holds two unsharded layers in flight (the one
  computing and the one prefetched) in parallel.fsdp_param_dtype, or every layer of the stage when
  reshard_after_forward=false; fsdp_cpu_offload moves weights, gradients and optimizer state to the host.
  DDP and one process shard nothing. optim=muon keeps one fp32 momentum for each hidden matrix and expert element
  (12 bytes per parameter there) and AdamW's two for embeddings, the output head and vectors; its step also
  gathers one whole matrix at a time under FSDP/TP (a transient the estimate leaves out).
- engine=deepspeed keeps weights and gradients in trainer.precision and, for bf16/fp16, an fp32 master copy next
  to the moments (2 + 2 + 12 bytes); ZeRO-1 shards the optimizer over dp_shard, ZeRO-2 also gradients, ZeRO-3 also
  weights plus two gathered layers; zero_offload moves the optimizer state (and ZeRO-3's weights) to the host.
- model.lora: the frozen base keeps its weights (the adapted projections' in model.lora.base_dtype); only the
  adapters (model.counting.lora_params) have gradients and optimizer state, sharded like the rest. The report's
  `lora` entry gives their count and what that saves per GPU against full fine-tuning of the same layout.
- Tensor parallelism divides every parameter except norms, routers and MLA's low-rank down-projections; expert
  parallelism divides the routed experts, which FSDP then shards over the remaining dp_shard x cp / ep ranks.
  The first stage also holds the input embeddings, the last the final norm, output projection and MTP modules.
- Activations are what autograd keeps per token in the compute dtype (trainer.precision under autocast, else
  parallel.fsdp_param_dtype under FSDP, else fp32), assuming fused/flash attention (no T x T scores) and sequence
  parallelism when tp > 1, plus one chunk of fp32 logits and their gradient on the last stage. A stage runs
  trainer.micro_batch_size sequences per forward, or under pipeline parallel its rank's batch cut into
  parallel.pp_microbatches, of which GPipe keeps all in flight and 1F1B min(pp - stage, microbatches). Per layer
  and token, in elements:
    attention: 2*dim (norm input, norm output) + 2*q_dim + 2*kv_dim (q, k, v, attention output)
    MLA attention: 2*dim + the q path (q_lora_rank twice if low-rank, then n_heads*qk) + the kv path
      (kv_lora_rank + rope, kv_lora_rank normed, n_heads*(nope + v) up-projected) + n_heads*qk (keys) +
      2*n_heads*v (values, attention output)
    SwiGLU MLP: 2*dim + 3*hidden; GELU MLP: 2*dim + 2*hidden
    MoE: 2*dim + top_k*(dim + 3*expert_hidden) + 3*shared_hidden
    sandwich and branch-output norms add dim for each post-norm input.
  parallel.ac_mode=full keeps only the input (dim) of every ac_every-th layer of a stage (as
  parallel/checkpointing.py wraps them) plus one layer recomputed at a time; `selective` keeps matmul and
  attention outputs and recomputes norms and activation functions:
    attention: dim + 2*q_dim + 2*kv_dim + dim (MLA: dim + its projection outputs + attention output + dim);
    SwiGLU/GeGLU: 2*hidden + dim; GELU: hidden + dim;
    MoE: top_k*(2*expert_hidden + dim) + 2*shared_hidden + dim.
  MTP modules (never checkpointed) keep two normed inputs, their concatenation and their layer.
  Framework overheads (CUDA context, allocator fragmentation, communication buffers) are not included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Optional

from model.config import BRANCH_NORM_POSITIONS, GATED_MLP_TYPES, LoRAConfig, ModelConfig
from model.counting import (
    final_norm_params,
    flops_per_token,
    kv_cache_elements_per_token,
    layer_params,
    layer_vectors_in_matrix_counts,
    lora_layer_params,
    lora_params,
    mtp_module_own_params,
    parameter_counts,
)
from model.dtypes import dtype_bytes
from model.peak_flops import peak_flops
from parallel.config import PP_SINGLE_STAGE_SCHEDULES, ParallelConfig
from parallel.dims import ParallelDims
from parallel.stage_plan import stage_layer_ranges

GIB = 1024**3
FP32_BYTES = 4
STATE_KINDS = ("weights", "gradients", "optimizer")  # what a GPU keeps between steps, apart from activations


@dataclass(frozen=True)
class TrainingRun:
    """What the estimate sizes: a model, its layout as ParallelDims.from_config resolved it, and the trainer's
    batch and precision (launcher.run_estimate builds it from a validated training config)."""

    model: ModelConfig
    dims: ParallelDims
    seq_len: int  # data.seq_len
    micro_batch_size: int  # trainer.micro_batch_size: sequences per forward on one rank (pp == 1)
    global_batch: int  # sequences per optimizer step over all data-parallel ranks
    precision: str  # trainer.precision
    optimizer: str = "adamw"  # optim.name: muon keeps one momentum per matrix element instead of AdamW's two

    @property
    def engine(self) -> str:
        return self.dims.cfg.engine

    @property
    def pipeline_microbatch(self) -> int:
        """Sequences one GPU runs per forward: the rank's batch cut into pp_microbatches under pipeline parallel."""
        if self.dims.pp == 1:
            return self.micro_batch_size
        return self.global_batch // self.dims.dp_degree // self.dims.cfg.pp_microbatches


def layout_world_size(cfg: ParallelConfig, num_gpus: Optional[int]) -> int:
    """The number of GPUs to size: `num_gpus`, or the product of the degrees when none is -1."""
    if num_gpus is not None:
        if num_gpus < 1:
            raise ValueError(f"num_gpus={num_gpus} must be >= 1 (or null: the product of the parallel degrees)")
        return num_gpus
    for key, value in (("dp_replicate", cfg.dp_replicate), ("dp_shard", cfg.dp_shard)):
        if value == -1:  # the only degrees that may take the rest of the world size
            raise ValueError(
                f"parallel.{key}=-1 takes the rest of the world size: give num_gpus=<GPUs to size for> "
                f"or set parallel.{key} to a degree"
            )
    # A degree below 1 is left to ParallelDims.from_config, whose message names it.
    return max(1, cfg.dp_replicate * cfg.dp_shard * cfg.cp * cfg.tp * cfg.pp)


def stage_layers(run: TrainingRun) -> list[range]:
    """The layers of each pipeline stage: training's split (parallel/stage_plan.py), one range of every layer
    without pipeline parallel. Called as parallel.api.parallelize calls the pipeline builder, without a sequence
    length (the attention part of the cost at model.max_seq_len), so the split is the one training builds."""
    if run.dims.pp == 1:
        return [range(run.model.n_layers)]
    return stage_layer_ranges(run.model, run.dims.cfg, run.dims.num_pipeline_stages)


def _check_schedule(run: TrainingRun) -> None:
    schedule = run.dims.cfg.pp_schedule
    if run.dims.pp > 1 and schedule not in PP_SINGLE_STAGE_SCHEDULES:
        raise ValueError(
            f"parallel.pp_schedule={schedule}: the estimate models one stage per rank "
            f"({' and '.join(PP_SINGLE_STAGE_SCHEDULES)}); size the layout with one of them"
        )


# ---------------------------------------------------------------------------------------------------- dtypes
@dataclass(frozen=True)
class _Bytes:
    """Bytes per parameter of each kind of state, and per activation element, under the run's engine."""

    weights: int
    gathered: int  # an unsharded layer FSDP/ZeRO-3 materialises for compute
    gradients: int
    optimizer: int  # AdamW's two moments, plus an fp32 master copy where weights are not fp32
    activations: int

    @property
    def muon_optimizer(self) -> int:
        """Muon's state per matrix element: one fp32 momentum (torch engine only: ZeRO is refused with Muon)."""
        return FP32_BYTES


def _bytes(run: TrainingRun) -> _Bytes:
    cfg = run.dims.cfg
    if run.engine == "deepspeed":
        weights = dtype_bytes(run.precision, "trainer.precision")
        master = FP32_BYTES if weights != FP32_BYTES else 0
        return _Bytes(weights, weights, weights, master + 2 * FP32_BYTES, weights)
    fsdp_param = dtype_bytes(cfg.fsdp_param_dtype, "parallel.fsdp_param_dtype")
    if run.precision != "fp32":
        compute = dtype_bytes(run.precision, "trainer.precision")
    else:
        compute = fsdp_param if run.dims.fsdp_enabled else FP32_BYTES
    return _Bytes(FP32_BYTES, fsdp_param, FP32_BYTES, 2 * FP32_BYTES, compute)


# ---------------------------------------------------------------------------------------------------- parameters
@dataclass
class StageParams:
    """Parameters one GPU of a stage holds before data-parallel sharding, split by how dp shards them."""

    dense: float  # sharded over the data-parallel shard ranks by FSDP/ZeRO
    experts: float  # routed experts: sharded over the shard ranks / ep
    largest_layer: float  # one layer's parameters on this GPU (for the FSDP/ZeRO-3 gather)
    dense_matrices: float = 0.0  # the hidden matrices among `dense` (Muon's under optim=muon; experts all are)
    adapters: float = 0.0  # LoRA adapters (model.lora), sharded like `dense`: with them only these train
    adapted_base: float = 0.0  # the adapted Linears' weights (part of `dense`), held in model.lora.base_dtype


def stage_params(run: TrainingRun, stage: int) -> StageParams:
    cfg, tp, ep = run.model, run.dims.tp, run.dims.ep
    ranges = stage_layers(run)
    last = stage == len(ranges) - 1
    layers = list(ranges[stage])
    if last:  # the MTP modules' layers
        layers += range(cfg.n_layers, cfg.n_layers + cfg.mtp_depth)
    dense = experts = largest = matrices = adapters = adapted_base = 0.0
    for i in layers:
        p = layer_params(cfg, i)
        lora_split, lora_replicated = lora_layer_params(cfg, i)
        layer_adapters = lora_split / tp + lora_replicated
        base_split, base_replicated = lora_layer_params(cfg, i, base=True)
        adapted_base += base_split / tp + base_replicated
        layer_dense = (p.attention + p.ffn) / tp + p.attention_replicated + p.norms + p.router
        layer_experts = p.experts / (tp * ep)
        matrices += layer_dense - p.norms - layer_vectors_in_matrix_counts(cfg, i) / tp
        dense += layer_dense
        experts += layer_experts
        adapters += layer_adapters
        largest = max(largest, layer_dense + layer_experts + layer_adapters)  # FSDP gathers the ep-local experts
    if stage == 0:
        dense += parameter_counts(cfg).embedding / tp
    if last:
        dense += final_norm_params(cfg) + cfg.mtp_depth * mtp_module_own_params(cfg)
        matrices += cfg.mtp_depth * 2 * cfg.dim * cfg.dim  # each MTP module's projection
        if not cfg.tie_embeddings:  # tied: the output is the embedding (pipeline parallel refuses tying)
            dense += cfg.vocab_size * cfg.dim / tp
    return StageParams(dense, experts, largest, dense_matrices=matrices, adapters=adapters, adapted_base=adapted_base)


# ---------------------------------------------------------------------------------------------------- activations
def _attention_activations(cfg: ModelConfig, mode: str) -> int:
    d = cfg.dim
    if cfg.mla is None:
        q_dim, kv_dim = cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
        return d + 2 * q_dim + 2 * kv_dim + d if mode == "selective" else 2 * d + 2 * q_dim + 2 * kv_dim
    mla, heads = cfg.mla, cfg.n_heads
    q_path = heads * mla.qk_head_dim + (mla.q_lora_rank or 0)
    kv_path = mla.kv_lora_rank + mla.qk_rope_head_dim + heads * (mla.qk_nope_head_dim + mla.v_head_dim)
    if mode == "selective":  # projection outputs and the attention output
        return d + q_path + kv_path + heads * mla.v_head_dim + d
    return (
        2 * d
        + q_path
        + (mla.q_lora_rank or 0)
        + kv_path
        + mla.kv_lora_rank
        + heads * mla.qk_head_dim
        + 2 * heads * mla.v_head_dim
    )


def _activation_elements_per_token(cfg: ModelConfig, layer_idx: int, mode: str) -> int:
    """Elements autograd keeps per token for one layer (see the module docstring)."""
    d = cfg.dim
    moe = cfg.moe
    is_moe = moe is not None and cfg.is_moe_layer(layer_idx)
    gated = cfg.mlp_type in GATED_MLP_TYPES
    if mode == "full":
        return d
    attn = _attention_activations(cfg, mode)
    if mode == "selective":
        if is_moe:
            mlp = moe.top_k * (2 * cfg.expert_hidden_dim + d) + 2 * cfg.shared_experts_hidden_dim + d
        elif gated:
            mlp = 2 * cfg.ffn_hidden_dim + d
        else:
            mlp = cfg.ffn_hidden_dim + d
        return attn + mlp
    if is_moe:
        mlp = 2 * d + moe.top_k * (d + 3 * cfg.expert_hidden_dim) + 3 * cfg.shared_experts_hidden_dim
    elif gated:
        mlp = 2 * d + 3 * cfg.ffn_hidden_dim
    else:
        mlp = 2 * d + 2 * cfg.ffn_hidden_dim
    post_norms = 2 * d if cfg.norm_position in BRANCH_NORM_POSITIONS else 0
    return attn + mlp + post_norms


def _microbatches_in_flight(run: TrainingRun, stage: int) -> int:
    dims = run.dims
    if dims.pp == 1:
        return 1
    micro = dims.cfg.pp_microbatches
    return micro if dims.cfg.pp_schedule == "GPipe" else min(dims.pp - stage, micro)


def activation_bytes(run: TrainingRun, stage: int) -> float:
    cfg, dims = run.model, run.dims
    ranges = stage_layers(run)
    last = stage == len(ranges) - 1
    sequences = run.pipeline_microbatch
    tokens = sequences * run.seq_len / dims.cp / dims.tp
    in_flight = _microbatches_in_flight(run, stage)
    mode, every = dims.cfg.ac_mode, dims.cfg.ac_every
    layers = ranges[stage]
    # parallel/checkpointing.py wraps every ac_every-th block of the stage (counted within the stage) under full
    checkpointed = [i for j, i in enumerate(layers) if mode == "full" and j % every == 0]

    def layer_mode(i: int) -> str:
        return mode if mode != "full" else "full" if i in checkpointed else "none"

    kept = sum(_activation_elements_per_token(cfg, i, layer_mode(i)) for i in layers) * in_flight
    if last:  # MTP modules (never checkpointed): two normed inputs, their concat, the layer
        mtp = range(cfg.n_layers, cfg.n_layers + cfg.mtp_depth)
        kept += sum(6 * cfg.dim + _activation_elements_per_token(cfg, i, "none") for i in mtp) * in_flight
    if checkpointed:  # one layer recomputed at a time during backward
        kept += max(_activation_elements_per_token(cfg, i, "none") for i in checkpointed)
    total = kept * tokens * _bytes(run).activations
    if last:  # one chunk of fp32 logits and their gradient (the loss chunks are recomputed)
        chunk = min(sequences * run.seq_len / dims.cp, cfg.loss_chunk_size)
        total += 2 * chunk * cfg.vocab_size / dims.tp * FP32_BYTES
    return total


# ---------------------------------------------------------------------------------------------------- memory
@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def gib(self) -> dict[str, float]:
        values = {**asdict(self), "total": self.total}
        return {key: round(value / GIB, 3) for key, value in values.items()}


def sharding(run: TrainingRun) -> str:
    """What the data-parallel engine shards: fsdp | hsdp | zero1-3 | none (DDP or one process)."""
    if run.engine == "deepspeed":
        return f"zero{run.dims.cfg.zero_stage}"
    if run.dims.fsdp_enabled:
        return "hsdp" if run.dims.hsdp_enabled else "fsdp"
    return "none"


@dataclass(frozen=True)
class StageState:
    """One GPU's weights, gradients and optimizer state of a stage as sharded (before any host offload), and the
    unsharded layers FSDP/ZeRO-3 gathers for compute: what launcher/dry_run.py compares with the built model."""

    weights: float
    gradients: float
    optimizer: float
    gathered: float


def on_host(run: TrainingRun) -> frozenset[str]:
    """Which kinds of state offloading keeps in host memory: fsdp_cpu_offload moves all three, zero_offload the
    optimizer state (and ZeRO-3's weights)."""
    cfg = run.dims.cfg
    if run.engine == "torch" and run.dims.fsdp_enabled and cfg.fsdp_cpu_offload:
        return frozenset({"weights", "gradients", "optimizer"})
    if run.engine == "deepspeed" and cfg.zero_offload:
        return frozenset({"weights", "optimizer"} if cfg.zero_stage == 3 else {"optimizer"})
    return frozenset()


def stage_state(run: TrainingRun, stage: int) -> StageState:
    _check_schedule(run)
    p, dims, cfg, b = stage_params(run, stage), run.dims, run.dims.cfg, _bytes(run)
    fsdp = run.engine == "torch" and dims.fsdp_enabled
    zero = cfg.zero_stage if run.engine == "deepspeed" else 0
    shards = dims.dp_shard * dims.cp  # FSDP's shard mesh (dp_shard x cp); DeepSpeed: dp_shard (the world)

    def held(sharded: bool, dense: float = p.dense, experts: float = p.experts) -> float:
        return dense / shards + experts / (shards // dims.ep) if sharded else dense + experts

    optimizer = held(fsdp or zero >= 1) * b.optimizer
    if run.optimizer == "muon":  # matrices and experts: one momentum; the rest (embeddings, head, vectors): AdamW
        optimizer = held(fsdp, p.dense - p.dense_matrices, 0.0) * b.optimizer
        optimizer += held(fsdp, p.dense_matrices, p.experts) * b.muon_optimizer

    def trained(sharded: bool) -> float:  # with LoRA adapters, only they have gradients and optimizer state
        if not run.model.lora.enabled:
            return held(sharded)
        return p.adapters / shards if sharded else p.adapters

    gathered = 0.0
    if fsdp and (shards > 1 or b.gathered != b.weights or "weights" in on_host(run)):
        in_flight = p.dense + p.experts if not cfg.reshard_after_forward else 2 * p.largest_layer
        gathered = in_flight * b.gathered
    elif zero >= 3 and shards > 1:
        gathered = 2 * p.largest_layer * b.gathered  # the gathered layer and the prefetched next one
    weight_shards = shards if fsdp or zero >= 3 else 1
    narrow = b.weights - dtype_bytes(run.model.lora.base_dtype, "model.lora.base_dtype")  # bytes saved per base param
    return StageState(
        weights=(held(fsdp or zero >= 3) + p.adapters / weight_shards) * b.weights
        - p.adapted_base / weight_shards * narrow,
        gradients=trained(fsdp or zero >= 2) * b.gradients,
        optimizer=trained(fsdp or zero >= 1) * b.optimizer if run.model.lora.enabled else optimizer,
        gathered=gathered,
    )


def stage_figures(run: TrainingRun, stage: int) -> dict[str, float]:
    """One stage's estimate, each kind apart and before offload (weights, gradients, optimizer, gathered,
    activations): what launcher/dry_run.py prints beside the built model's figures."""
    return {**asdict(stage_state(run, stage)), "activations": activation_bytes(run, stage)}


def stage_memory(run: TrainingRun, stage: int) -> MemoryEstimate:
    state, host = stage_state(run, stage), on_host(run)
    on_gpu = {key: 0.0 if key in host else getattr(state, key) for key in STATE_KINDS}
    return MemoryEstimate(
        on_gpu["weights"] + state.gathered, on_gpu["gradients"], on_gpu["optimizer"], activation_bytes(run, stage)
    )


def estimate_memory(run: TrainingRun) -> MemoryEstimate:
    """Bytes per GPU on the pipeline stage with the largest total."""
    return max((stage_memory(run, s) for s in range(len(stage_layers(run)))), key=lambda m: m.total)


# ---------------------------------------------------------------------------------------------------- report
def estimate(
    run: TrainingRun, *, gpu: str, tokens: Optional[float], mfu: float, peak_flops_per_gpu: Optional[float] = None
) -> dict[str, Any]:
    """The full report as a JSON-serialisable dict: `gpu` names the device, whose peak FLOP/s is
    `peak_flops_per_gpu` or else model.peak_flops's figure for it (unknown: no time); `tokens` the budget (None:
    20 per parameter, Chinchilla); `mfu` the model FLOPs utilisation assumed."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu} must be in (0, 1]")
    if tokens is not None and tokens <= 0:
        raise ValueError(f"tokens={tokens} must be positive (or null for 20 tokens per parameter)")
    if peak_flops_per_gpu is not None and peak_flops_per_gpu <= 0:
        raise ValueError(f"peak_flops={peak_flops_per_gpu} must be positive (or null: the figure listed for gpu)")
    _check_schedule(run)
    cfg, dims = run.model, run.dims
    counts = parameter_counts(cfg)
    fpt = flops_per_token(cfg, run.seq_len)
    tokens = tokens if tokens is not None else 20.0 * counts.total
    peak = peak_flops_per_gpu if peak_flops_per_gpu is not None else peak_flops(gpu)
    report: dict[str, Any] = {
        "model": cfg.name,
        "params_total": counts.total,
        "params_active": counts.active,
        "params_embedding": counts.embedding,
        "params_flops": counts.flops_params,
        "seq_len": run.seq_len,
        "train_flops_per_token": fpt,
        "kv_cache_bytes_per_token": kv_cache_elements_per_token(cfg) * _bytes(run).activations,
        "layout": {
            "num_gpus": dims.world_size,
            "dp": dims.dp_degree,
            "tp": dims.tp,
            "pp": dims.pp,
            "cp": dims.cp,
            "ep": dims.ep,
            "sharding": sharding(run),
            "micro_batch_size": run.pipeline_microbatch,
            "global_batch_tokens": run.global_batch * run.seq_len,
            "activation_checkpointing": dims.cfg.ac_mode,
            "precision": run.precision,
            "stage_layers": [[r.start, r.stop] for r in stage_layers(run)],
        },
        "memory_per_gpu_gib": estimate_memory(run).gib(),
        "lora": _lora_report(run, counts.total),
        "tokens": tokens,
        "train_flops_total": fpt * tokens,
        "gpu": gpu,
        "peak_flops_per_gpu": peak,
        "mfu": mfu,
    }
    if peak is None:
        report.update(tokens_per_second=None, time_to_train_hours=None, gpu_hours=None)
    else:
        throughput = dims.world_size * peak * mfu  # achieved model FLOP/s of the whole job
        seconds = fpt * tokens / throughput
        report.update(
            tokens_per_second=throughput / fpt,
            time_to_train_hours=seconds / 3600,
            gpu_hours=seconds / 3600 * dims.world_size,
        )
    return report


def _lora_report(run: TrainingRun, base_params: int) -> Optional[dict[str, Any]]:
    """With model.lora: its trained parameters, their share of the base's, and what it saves per GPU against full
    fine-tuning of the same layout (gradients and optimizer state; the adapters' own weights added back)."""
    if not run.model.lora.enabled:
        return None
    full = estimate_memory(dataclasses.replace(run, model=dataclasses.replace(run.model, lora=LoRAConfig())))
    lora = estimate_memory(run)
    adapters = lora_params(run.model)
    return {
        "params": adapters,
        "trainable_fraction": adapters / base_params,
        "optimizer_saved_gib_per_gpu": round((full.optimizer - lora.optimizer) / GIB, 3),
        "gradients_saved_gib_per_gpu": round((full.gradients - lora.gradients) / GIB, 3),
    }


def _human(n: float) -> str:
    if abs(n) >= 1e15:
        return f"{n:.3g}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def format_table(report: dict[str, Any]) -> str:
    lay, mem = report["layout"], report["memory_per_gpu_gib"]
    stages = " | ".join(f"{start}-{stop - 1}" for start, stop in lay["stage_layers"])
    rows = [
        ("model", report["model"]),
        (
            "parameters (total / active / embedding)",
            f"{report['params_total']:,} / {report['params_active']:,} / {report['params_embedding']:,}",
        ),
        ("train FLOPs per token", f"{_human(report['train_flops_per_token'])} at seq_len {report['seq_len']}"),
        (
            "layout",
            (
                f"{lay['num_gpus']} GPUs = dp {lay['dp']} x tp {lay['tp']} x pp {lay['pp']} x cp {lay['cp']}"
                f" (ep {lay['ep']}), sharding {lay['sharding']}, AC {lay['activation_checkpointing']}"
            ),
        ),
        ("stage layers", stages),
        (
            "batch",
            (
                f"micro {lay['micro_batch_size']}, global {lay['global_batch_tokens']:,} tokens, "
                f"precision {lay['precision']}"
            ),
        ),
    ]
    if report.get("lora") is not None:
        lora = report["lora"]
        rows.append(
            (
                "LoRA adapters (trained)",
                f"{lora['params']:,} ({100 * lora['trainable_fraction']:.3f}% of the base); saves "
                f"{lora['optimizer_saved_gib_per_gpu']:.2f} GiB optimizer + "
                f"{lora['gradients_saved_gib_per_gpu']:.2f} GiB gradients per GPU",
            )
        )
    rows += [
        (f"memory/GPU {key} (GiB)", f"{mem[key]:.2f}")
        for key in ("weights", "gradients", "optimizer", "activations", "total")
    ]
    rows.append(("token budget", f"{_human(report['tokens'])} tokens, {_human(report['train_flops_total'])} FLOPs"))
    if report["time_to_train_hours"] is None:
        rows.append(("time to train", f"unknown: no peak FLOP/s for gpu={report['gpu']!r}"))
    else:
        hours = report["time_to_train_hours"]
        rows.append(
            (
                "time to train",
                (
                    f"{hours:,.1f} h ({hours / 24:,.1f} days) on {lay['num_gpus']} x "
                    f"{report['gpu']} at MFU {report['mfu']:.0%}; "
                    f"{report['gpu_hours']:,.0f} GPU-hours"
                ),
            )
        )
        rows.append(("throughput", f"{report['tokens_per_second']:,.0f} tokens/s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
