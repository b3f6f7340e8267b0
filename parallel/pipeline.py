"""Pipeline parallelism: cut the decoder into stages of consecutive layers and run them with a torch.distributed
.pipelining schedule (GPipe, 1F1B, Interleaved 1F1B, zero-bubble).

A stage is the same `Transformer` class with the other stages' layers deleted, `tok_embeddings` kept only on the
first stage and `norm`/`output` only on the last (see model/transformer.py), so parameter names - and therefore
checkpoints - are the same as the unsplit model's. Which layers and stages go where is parallel/stage_plan.py;
what pipeline parallel cannot carry (pp x cp, zero-bubble schedules with FSDP/DDP/TP stages, tied embeddings, MoE
router losses, fp16, more stages than layers) is refused by ParallelDims.from_config before anything is built, so
this file only builds.

The schedule computes the loss on the last stage (model.loss.cross_entropy_loss per microbatch; gradients are the
mean over microbatches), so the model's own loss is not used. `Pipeline.eval_loss` is the held-out loss through the
same schedule, forward only; `Pipeline.forward_results` runs it with another function of the logits (downstream
scores).
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

from model.loss import IGNORE_INDEX, cross_entropy_loss
from parallel.stage_plan import stage_ids_for_rank, stage_layer_ranges


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
        """Forward only through the schedule (no backward, no gradients): the batch loss on the rank holding the
        last stage, else None. Each microbatch's loss is its mean over its non-ignored labels, so the batch loss is
        their mean weighted by those counts (the token mean a single process computes, also when labels are partly
        ignored). The batch must have the training batch's shape: stages fix their receive buffers at the first
        step. Stages are not switched to eval mode here (the caller does)."""
        losses: list[torch.Tensor] = []
        inputs = (tokens,) if self.has_first else ()
        forward_only = getattr(self.schedule, "eval", None) or self._forward_only_step
        with _forward_actions_only(self.schedule):
            if self.has_last:
                forward_only(*inputs, target=labels, losses=losses)
                # The schedule splits the batch with tensor_split along rows, as here.
                counts = torch.stack([(chunk != IGNORE_INDEX).sum() for chunk in labels.tensor_split(len(losses))])
                means = torch.stack([_plain(loss.detach()) for loss in losses])
                return (means * counts).sum() / counts.sum().clamp(min=1)
            forward_only(*inputs)
        return None

    @torch.no_grad()
    def forward_results(self, tokens: torch.Tensor, targets: torch.Tensor, fn: Callable) -> Optional[torch.Tensor]:
        """Forward only through the schedule with `fn(logits, targets)` in place of the loss on the last stage (e.g.
        per-token scores for downstream evaluation): the per-microbatch results concatenated along the batch on
        the rank holding the last stage, else None. The batch must have the training batch's shape."""
        results: list[torch.Tensor] = []
        inputs = (tokens,) if self.has_first else ()
        forward_only = getattr(self.schedule, "eval", None) or self._forward_only_step
        saved = self.schedule._loss_fn
        self.schedule._loss_fn = fn
        try:
            with _forward_actions_only(self.schedule):
                if self.has_last:
                    forward_only(*inputs, target=targets, losses=results)
                    return torch.cat([_plain(r.detach()) for r in results])
                forward_only(*inputs)
        finally:
            self.schedule._loss_fn = saved
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


def _device_for(mesh: DeviceMesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    module = getattr(torch, mesh.device_type)
    return torch.device(mesh.device_type, module.current_device())


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


def pipeline_parallelize(
    model: nn.Module, dims, parallelize_stage: Callable, seq_len: Optional[int] = None
) -> Pipeline:
    """parallelize()'s pp > 1 branch: split `model` (a plain Transformer, usually on the meta device) into this pp
    rank's stages, lay each out with `parallelize_stage` (TP, AC, compile, FSDP on the non-pp dims), and wrap them
    in the configured schedule. `seq_len` refines the attention part of the balancing cost."""
    cfg, model_cfg = dims.cfg, model.cfg
    pp_mesh = dims.submesh("pp")
    num_stages = dims.num_pipeline_stages
    ranges = stage_layer_ranges(model_cfg, cfg, num_stages, seq_len)
    stage_ids = stage_ids_for_rank(pp_mesh.get_local_rank(), pp_mesh.size(), cfg.pp_stages_per_rank, cfg.pp_schedule)
    device, group = _device_for(pp_mesh), pp_mesh.get_group()
    stage_modules, pipeline_stages = [], []
    for i, stage_id in enumerate(stage_ids):
        # The last local stage takes the model itself; the others a copy (built on meta, a copy costs nothing).
        source = model if i == len(stage_ids) - 1 else copy.deepcopy(model)
        module = split_stage(source, ranges[stage_id], stage_id == 0, stage_id == num_stages - 1)
        # PipelineStage knows FSDP2 and DDP modules (it defers their gradient sync to the last microbatch).
        module = parallelize_stage(module, dims)
        if dims.tp > 1 and cfg.sequence_parallel:
            plain_tensors_between_stages(module, dims.submesh("tp"))
        stage_modules.append(module)
        pipeline_stages.append(PipelineStage(module, stage_id, num_stages, device, group=group))

    loss_fn = functools.partial(
        cross_entropy_loss, z_loss_weight=model_cfg.z_loss_weight, chunk_size=model_cfg.loss_chunk_size
    )
    schedule_cls = get_schedule_class(cfg.pp_schedule)
    if issubclass(schedule_cls, PipelineScheduleSingle):
        schedule = schedule_cls(pipeline_stages[0], n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn)
    else:
        schedule = schedule_cls(pipeline_stages, n_microbatches=cfg.pp_microbatches, loss_fn=loss_fn)
    return Pipeline(schedule, stage_modules, 0 in stage_ids, num_stages - 1 in stage_ids)
