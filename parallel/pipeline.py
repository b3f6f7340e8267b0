"""Pipeline parallelism: cut the decoder into stages of consecutive layers and run them with a torch.distributed
.pipelining schedule (GPipe, 1F1B, Interleaved 1F1B, zero-bubble).

A stage is the same `Transformer` class with the other stages' layers deleted, `tok_embeddings` kept only on the
first stage and `norm`/`output` only on the last (see model/transformer.py), so parameter names - and therefore
checkpoints - are the same as the unsplit model's. The cut is balanced by the closed-form cost of each layer
(model/estimate.py: training FLOPs per token; MoE and dense layers differ), with the output projection's cost on the
last stage, unless `parallel.pp_layer_split` pins it. With several stages per rank the stages go round the ranks in
a loop (interleaved schedules) or in a V (ZBVZeroBubble: rank r holds stages r and 2*pp-1-r).

The schedule computes the loss on the last stage (model.loss.cross_entropy_loss per microbatch; gradients are the
mean over microbatches), so the model's own loss is not used: MoE router losses, which the model adds only when it
computes the loss itself, are therefore refused under pipeline parallel rather than silently dropped.

`Pipeline.eval_loss` is the held-out loss through the same schedule, forward only. The zero-bubble schedules
(InterleavedZeroBubble, ZBVZeroBubble) run pipeline parallel alone: with FSDP/DDP or tensor parallel stages torch
computes wrong gradients or fails, so those combinations are refused.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import PipelineScheduleSingle, get_schedule_class

from parallel.config import ParallelConfig

SCHEDULES = ("GPipe", "1F1B", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble")
V_SCHEDULES = ("ZBVZeroBubble",)
ZERO_BUBBLE_SCHEDULES = ("InterleavedZeroBubble", "ZBVZeroBubble")  # backward split into input and weight passes


# ---------------------------------------------------------------------------------------------- the cut
def layer_costs(model_cfg, seq_len: Optional[int] = None) -> list[float]:
    """Training FLOPs per token of each layer (6 x active matmul params + attention over the context)."""
    from model.estimate import attention_context, layer_params

    context = attention_context(model_cfg, seq_len or model_cfg.max_seq_len)
    d_attn = model_cfg.n_heads * model_cfg.attn_head_dim
    return [6.0 * layer_params(model_cfg, i).active + 12.0 * d_attn * context for i in range(model_cfg.n_layers)]


def balanced_layer_split(costs: list[float], num_stages: int, last_stage_extra: float = 0.0) -> list[range]:
    """Contiguous ranges of layers, one per stage, minimising the most expensive stage.

    A small exact dynamic programme over (layers, stages): a greedy cut misplaces the boundary when costs are
    uneven (MoE every other layer, a heavy output head), and no library does this partition for us."""
    n = len(costs)
    if not 1 <= num_stages <= n:
        raise ValueError(f"cannot split {n} layers into {num_stages} pipeline stages: every stage needs a layer")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def stage_cost(start: int, end: int, stage: int) -> float:
        return prefix[end] - prefix[start] + (last_stage_extra if stage == num_stages - 1 else 0.0)

    inf = float("inf")
    # best[s][e]: the smallest max-stage cost placing layers [0, e) on stages [0, s]; cut[s][e] where stage s starts.
    best = [[inf] * (n + 1) for _ in range(num_stages)]
    cut = [[0] * (n + 1) for _ in range(num_stages)]
    for end in range(1, n + 1):
        best[0][end] = stage_cost(0, end, 0)
    for s in range(1, num_stages):
        for end in range(s + 1, n + 1):
            for start in range(s, end):
                value = max(best[s - 1][start], stage_cost(start, end, s))
                if value < best[s][end]:
                    best[s][end], cut[s][end] = value, start
    ranges, end = [], n
    for s in range(num_stages - 1, -1, -1):
        start = cut[s][end] if s > 0 else 0
        ranges.append(range(start, end))
        end = start
    return ranges[::-1]


def parse_layer_split(spec: str, n_layers: int, num_stages: int) -> list[range]:
    """'0-3,4-7' (inclusive ranges) -> [range(0, 4), range(4, 8)], checked to cover every layer once, in order."""
    ranges = []
    try:
        for part in spec.split(","):
            first, last = (int(x) for x in part.strip().split("-"))
            ranges.append(range(first, last + 1))
    except ValueError as exc:
        raise ValueError(f"parallel.pp_layer_split={spec!r}: expected inclusive ranges like '0-3,4-7'") from exc
    if len(ranges) != num_stages:
        raise ValueError(f"parallel.pp_layer_split={spec!r} has {len(ranges)} ranges for {num_stages} stages")
    expected = 0
    for r in ranges:
        if r.start != expected or len(r) == 0:
            raise ValueError(
                f"parallel.pp_layer_split={spec!r} must cover layers 0..{n_layers - 1} in order, each stage non-empty"
            )
        expected = r.stop
    if expected != n_layers:
        raise ValueError(f"parallel.pp_layer_split={spec!r} covers {expected} layers but model.n_layers={n_layers}")
    return ranges


def stage_ids_for_rank(pp_rank: int, pp: int, stages_per_rank: int, schedule: str) -> list[int]:
    """Which stages this pipeline rank holds: one; a loop (r, r+pp, ...); or a V (r, 2*pp-1-r)."""
    if schedule in V_SCHEDULES:
        if stages_per_rank != 2:
            raise ValueError(f"parallel.pp_schedule={schedule} needs parallel.pp_stages_per_rank=2 (a V of stages)")
        return [pp_rank, 2 * pp - 1 - pp_rank]
    if issubclass(get_schedule_class(schedule), PipelineScheduleSingle) and stages_per_rank != 1:
        raise ValueError(
            f"parallel.pp_schedule={schedule} runs one stage per rank: set parallel.pp_stages_per_rank=1, or use "
            f"Interleaved1F1B / InterleavedZeroBubble / ZBVZeroBubble for several"
        )
    return [pp_rank + i * pp for i in range(stages_per_rank)]


def split_stage(model: nn.Module, layers: range, is_first: bool, is_last: bool) -> nn.Module:
    """`model` itself, reduced in place to `layers`, with embeddings only if first and norm/output only if last."""
    for name in list(model.layers.keys()):
        if int(name) not in layers:
            del model.layers[name]
    if not is_first:
        model.tok_embeddings = None
        model.pos_embeddings = None
    if not is_last:
        model.norm = None
        model.output = None
    return model


# ---------------------------------------------------------------------------------------------- stages + schedule
@dataclass
class Pipeline:
    """What pipeline parallel hands the trainer: the schedule, this rank's stage modules, and its role."""

    schedule: object
    stages: list[nn.Module]
    has_first: bool
    has_last: bool

    def parameters(self):
        for stage in self.stages:
            yield from stage.parameters()

    def train(self, mode: bool = True) -> "Pipeline":
        for stage in self.stages:
            stage.train(mode)
        return self

    def eval(self) -> "Pipeline":
        return self.train(False)

    @torch.no_grad()
    def eval_loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Forward only through the schedule (no backward, no gradients): the batch loss (mean over microbatches)
        on the rank holding the last stage, else None. The batch must have the training batch's shape: stages fix
        their receive buffers at the first step. Stages are not switched to eval mode here (the caller does)."""
        losses: list[torch.Tensor] = []
        inputs = (tokens,) if self.has_first else ()
        forward_only = getattr(self.schedule, "eval", None) or self._forward_only_step
        with _forward_actions_only(self.schedule):
            if self.has_last:
                forward_only(*inputs, target=labels, losses=losses)
                return torch.stack([_plain(loss.detach()) for loss in losses]).mean()
            forward_only(*inputs)
        return None

    def _forward_only_step(self, *args, **kwargs):
        """What `schedule.eval` does where a torch lacks it: `step` with the backward switched off."""
        saved = self.schedule._has_backward
        self.schedule._has_backward = False
        try:
            return self.schedule.step(*args, **kwargs)
        finally:
            self.schedule._has_backward = saved

    def step(self, tokens: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Forward and backward of one batch through the pipeline (every pp rank calls it with the same batch;
        under tensor parallel inside parallel.loss_context, as the loss is computed here). Returns the batch loss
        (mean over microbatches) on the rank holding the last stage, else None."""
        losses: list[torch.Tensor] = []
        inputs = (tokens,) if self.has_first else ()
        if self.has_last:
            self.schedule.step(*inputs, target=labels, losses=losses)
            return torch.stack([_plain(loss.detach()) for loss in losses]).mean()
        self.schedule.step(*inputs)
        return None


# Actions of a multi-stage schedule's program (torch's _ComputationType values) that forward-only evaluation runs.
_FORWARD_ACTIONS = frozenset({"F", "SEND_F", "RECV_F", "UNSHARD", "RESHARD"})


@contextlib.contextmanager
def _forward_actions_only(schedule) -> Iterator[None]:
    """Run a multi-stage schedule's per-rank program with its backward actions (B, I, W, SEND_B, RECV_B,
    REDUCE_GRAD) left out, the forward ones in their training order.

    torch's forward-only pass (`schedule.eval`) keeps the whole program and only switches the backward off, but a
    V schedule (ZBVZeroBubble) hands gradients between the two adjacent stages of one rank inside its backward
    actions and asserts that the stage has a backward (torch 2.13: "can't steal_bwd_input if this stage doesn't
    have backward"). The forward actions alone keep their order and dependencies, so they run as in training.
    Single-stage schedules have no such program and run unchanged."""
    program = getattr(schedule, "pipeline_order_with_comms", None)
    if not program:
        yield
        return

    def kind(action) -> str:
        return getattr(action.computation_type, "value", action.computation_type)

    schedule.pipeline_order_with_comms = {
        rank: [a for a in actions if a is not None and kind(a) in _FORWARD_ACTIONS] for rank, actions in program.items()
    }
    try:
        yield
    finally:
        schedule.pipeline_order_with_comms = program


def _plain(loss: torch.Tensor) -> torch.Tensor:
    """A microbatch loss as a plain tensor (under tensor parallel's loss_parallel it is a replicated DTensor)."""
    from torch.distributed.tensor import DTensor

    return loss.full_tensor() if isinstance(loss, DTensor) else loss


def _check_supported(model_cfg, num_stages: int) -> None:
    if model_cfg is None:
        return
    if model_cfg.tie_embeddings and num_stages > 1:
        raise ValueError(
            "model.tie_embeddings=true puts one weight on the first and the last pipeline stage, which pipeline "
            "parallel does not synchronise: set model.tie_embeddings=false or parallel.pp=1"
        )
    moe = model_cfg.moe
    if moe is not None and (moe.aux_loss_weight > 0 or moe.router_z_loss_weight > 0):
        raise ValueError(
            "pipeline parallel computes the loss outside the model and would drop the MoE router losses: set "
            "model.moe.aux_loss_weight=0 and model.moe.router_z_loss_weight=0, or parallel.pp=1"
        )


def _device_for(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    module = getattr(torch, mesh.device_type)
    return torch.device(mesh.device_type, module.current_device())


def build_pipeline(
    model: nn.Module,
    pp_mesh: DeviceMesh,
    cfg: ParallelConfig,
    model_cfg,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    microbatches: int,
    stage_transform: Optional[Callable[[nn.Module], nn.Module]] = None,
    seq_len: Optional[int] = None,
):
    """Split `model` into stages for this pp rank and build the schedule.

    Returns (schedule, stage_modules, has_first, has_last). `stage_transform` is applied to each stage module
    before it is wrapped (TP/FSDP/AC via parallelize_stage); `seq_len` refines the attention part of the cost."""
    if cfg.pp_schedule not in SCHEDULES:
        raise ValueError(f"parallel.pp_schedule={cfg.pp_schedule!r} is not one of {list(SCHEDULES)}")
    if pp_mesh.ndim != 1:
        raise ValueError(f"pipeline parallel needs a 1-D pp mesh, got {pp_mesh.ndim} dims ({pp_mesh.mesh_dim_names})")
    pp, pp_rank = pp_mesh.size(), pp_mesh.get_local_rank()
    num_stages = pp * cfg.pp_stages_per_rank
    n_layers = len(model.layers)
    _check_supported(model_cfg, num_stages)
    if num_stages > n_layers:
        raise ValueError(
            f"{num_stages} pipeline stages (parallel.pp={pp} x pp_stages_per_rank={cfg.pp_stages_per_rank}) but "
            f"only {n_layers} layers: lower parallel.pp or pp_stages_per_rank"
        )
    if cfg.pp_layer_split:
        ranges = parse_layer_split(cfg.pp_layer_split, n_layers, num_stages)
    else:
        if model_cfg is None:
            raise ValueError("build_pipeline needs model_cfg for the cost-balanced split (or parallel.pp_layer_split)")
        output_cost = 6.0 * model_cfg.vocab_size * model_cfg.dim
        ranges = balanced_layer_split(layer_costs(model_cfg, seq_len), num_stages, last_stage_extra=output_cost)

    stage_ids = stage_ids_for_rank(pp_rank, pp, cfg.pp_stages_per_rank, cfg.pp_schedule)
    device = _device_for(pp_mesh)
    group = pp_mesh.get_group()
    stage_modules, pipeline_stages = [], []
    for i, stage_id in enumerate(stage_ids):
        # The last local stage takes the model itself; the others a copy (built on meta, a copy costs nothing).
        source = model if i == len(stage_ids) - 1 else copy.deepcopy(model)
        module = split_stage(source, ranges[stage_id], stage_id == 0, stage_id == num_stages - 1)
        if stage_transform is not None:
            module = stage_transform(module)
        stage_modules.append(module)
        pipeline_stages.append(PipelineStage(module, stage_id, num_stages, device, group=group))

    schedule_cls = get_schedule_class(cfg.pp_schedule)
    if issubclass(schedule_cls, PipelineScheduleSingle):
        schedule = schedule_cls(pipeline_stages[0], n_microbatches=microbatches, loss_fn=loss_fn)
    else:
        schedule = schedule_cls(pipeline_stages, n_microbatches=microbatches, loss_fn=loss_fn)
    return schedule, stage_modules, 0 in stage_ids, num_stages - 1 in stage_ids


def plain_tensors_between_stages(stage: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Under sequence parallel the residual stream is a DTensor sharded on the sequence; send its local shard
    between stages and rebuild the DTensor on arrival.

    Plain tensors are what PipelineStage's shape inference and send/recv handle in every torch version (DTensor
    transfer needs torch >= 2.12's get_mesh callback). Hooks, not a wrapper module, so parameter names stay put.
    """
    from torch.distributed.tensor import DTensor, Shard

    if stage.tok_embeddings is None:  # receives the previous stage's local shard

        def to_dtensor(module, args, kwargs):
            hidden = args[0]
            if not isinstance(hidden, DTensor):
                hidden = DTensor.from_local(hidden, tp_mesh, [Shard(1)], run_check=False)
            return (hidden, *args[1:]), kwargs

        stage.register_forward_pre_hook(to_dtensor, with_kwargs=True)
    if stage.output is None:  # sends its local shard to the next stage

        def to_local(module, args, output):
            return output.to_local() if isinstance(output, DTensor) else output

        stage.register_forward_hook(to_local)


def pipeline_loss_fn(model_cfg) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The last stage's loss: model.loss.cross_entropy_loss with the model's z-loss weight."""
    from model.loss import cross_entropy_loss

    z_loss_weight = model_cfg.z_loss_weight if model_cfg is not None else 0.0
    return functools.partial(cross_entropy_loss, z_loss_weight=z_loss_weight)


def pipeline_parallelize(model: nn.Module, dims, cfg: ParallelConfig, *, model_cfg, mesh: DeviceMesh,
                         parallelize_stage: Callable, seq_len: Optional[int] = None) -> Pipeline:
    """parallelize()'s pp > 1 branch: split, lay out each stage with `parallelize_stage` (TP, CP, AC, compile,
    FSDP on the non-pp dims), then wrap the stages in the configured schedule."""
    if cfg.engine == "deepspeed":
        raise ValueError("parallel.pp > 1 does not combine with parallel.engine=deepspeed: use engine=torch (FSDP)")
    if dims.cp > 1:  # stages get no positions argument, so RoPE would see chunk-local positions
        raise ValueError("parallel.pp > 1 with parallel.cp > 1 is not supported: set one of them to 1")
    if cfg.pp_schedule in ZERO_BUBBLE_SCHEDULES and (dims.fsdp_enabled or dims.ddp_enabled or dims.tp > 1):
        # Measured through the launcher on torch 2.13 (4 CPU ranks): with FSDP on the stages both schedules train
        # with other gradients than one process (step-1 grad norm 0.488 vs 0.651), with tensor parallel they fail
        # in the input backward ("Can't detach views in-place"); DDP is pytorch/pytorch#144530.
        raise ValueError(
            f"parallel.pp_schedule={cfg.pp_schedule} splits the backward into input and weight passes, which torch's "
            f"pipelining does not combine with data parallel (FSDP/DDP) or tensor parallel stages: use "
            f"pp_schedule=Interleaved1F1B (or 1F1B), or pipeline parallel alone"
        )

    def lay_out(stage: nn.Module) -> nn.Module:
        # PipelineStage knows FSDP2 and DDP modules (it defers their gradient sync to the last microbatch).
        laid_out = parallelize_stage(stage, dims, cfg, model_cfg=model_cfg, mesh=mesh)
        if dims.tp > 1 and cfg.sequence_parallel:
            plain_tensors_between_stages(laid_out, dims.submesh(mesh, "tp"))
        return laid_out

    schedule, stages, has_first, has_last = build_pipeline(
        model, dims.submesh(mesh, "pp"), cfg, model_cfg, loss_fn=pipeline_loss_fn(model_cfg),
        microbatches=cfg.pp_microbatches, stage_transform=lay_out, seq_len=seq_len,
    )
    return Pipeline(schedule, stages, has_first, has_last)
