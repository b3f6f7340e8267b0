"""What every train module is: the training of one layout family, owned in one object (OLMo-core's train module).

A train module holds its model parts (one module, or a pipeline rank's stage modules), their optimizers and lr
schedules (launcher/optim.py, launcher/schedule.py: containers over the parts, torchtitan's shape), and answers
everything the loop and the checkpointer ask: one optimizer step over a batch, the held-out loss of a batch, its
state to checkpoint and restore, initial weights from another run, and the module to sample from. The loop in
launcher/trainer.py talks only to this surface, so it never branches on the layout.

What the families share is written here once: the model's construction with the seed's (or init_from's) weights
(`initial_model`, `materialize_model`) and, for the families that step one module, micro-batch accumulation with
the model's auxiliary losses (`accumulate`: the names the model reports in `last_aux_losses`, MoE router losses
and the MTP loss), so every layout logs the same figures.

The loss of a step is the mean over the counted labels (those not IGNORE_INDEX) of the whole global batch, not a
mean of per-micro-batch or per-rank means: with supervised fine-tuning's loss masks (data_pipeline/chat.py) micro
batches count very different numbers of tokens (one row may be all prompt), and a mean of means would weigh a
token of a short answer more than a token of a long one, and differently under every micro-batching and
data-parallel size. So each micro batch's mean loss is weighted by `loss_weights`' n * dp * k / N (n its counted
labels, N the global batch's, dp the data-parallel ranks whose gradients are averaged, k the rank's micro
batches) before the usual division by k, which makes its contribution sum(CE) / N after data-parallel averaging;
the global count costs one all-reduce of one number per step, and no host sync. For pretraining (no ignored
labels) every micro batch counts the same tokens, the weight is exactly 1.0, and the step (gradients, logged
loss) is bit for bit what it was before the weights existed.

Families (launcher/train_modules/__init__.py picks one):
- torch_layouts.py: single process, DDP, FSDP2/HSDP, TP(+SP), CP, EP and their mixes: forward/backward per micro
  batch on one module, torch's AdamW.
- pipeline.py: pipeline parallel: the schedule runs forward/backward over several stage modules per rank.
- zero.py: DeepSpeed ZeRO 1/2/3: DeepSpeed's engine owns the optimizer and the backward.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

import model as model_lib
from launcher.distributed import DistEnv
from launcher.optim import merge_disjoint
from launcher.validation import RunPlan, generation_blocked
from model.dtypes import torch_dtype
from parallel import parallelize

log = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """One optimizer step's figures, as device tensors (read on log steps only, so the step never waits)."""

    loss: torch.Tensor  # this rank's term of the global-batch loss: its mean over ranks is the logged loss
    grad_norm: torch.Tensor  # global gradient norm before clipping
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. MoE auxiliary losses (means over ranks)
    skipped: bool = False  # the update was dropped for a non-finite loss or gradient (trainer.skip_nonfinite_steps)


@dataclass
class MicroBatch:
    """One micro batch of a step, as `TrainModule.accumulate` hands it to the family's forward and backward."""

    inputs: torch.Tensor
    labels: torch.Tensor
    count: int  # micro batches in the step: each weighted loss is 1/count of the step's
    last: bool  # the step's final micro batch (data parallel syncs gradients on it)
    # Its counted labels over an equal share of the global batch's (a device scalar, TrainModule.loss_weights):
    # exactly 1.0 when every micro batch counts the same labels; None: 1
    weight: Optional[torch.Tensor] = None

    def term(self, loss: torch.Tensor) -> torch.Tensor:
        """What this micro batch's mean loss contributes to the step's: loss x weight / count (the weight a
        replicated DTensor under tensor parallel's loss_parallel, where plain tensors do not mix)."""
        if self.weight is None:
            return loss / self.count
        from torch.distributed.tensor import DTensor, Replicate

        weight = self.weight
        if isinstance(loss, DTensor):
            weight = DTensor.from_local(
                weight, loss.device_mesh, [Replicate()] * loss.device_mesh.ndim, run_check=False
            )
        return loss * weight / self.count


def autocast(precision: str, device: torch.device):
    """torch.autocast for bf16/fp16 training; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype(precision))


def token_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, T, 2] from logits [B, T, V] (plain, or a DTensor under tensor parallel): the float32 log-probability of
    each target token and 1.0 where it is the argmax (what evaluation.loom_scorer extracts per scored row)."""
    from torch.distributed.tensor import DTensor

    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets[..., None]).squeeze(-1)
    greedy = (log_probs.argmax(dim=-1) == targets).float()
    return torch.stack([picked, greedy], dim=-1)


def greedy_ids(logits: torch.Tensor) -> torch.Tensor:
    """[B, T] the argmax token of logits [B, T, V] (plain, or a DTensor under tensor parallel): greedy decoding's
    next token after each position, as model.generation picks it."""
    from torch.distributed.tensor import DTensor

    if isinstance(logits, DTensor):
        logits = logits.full_tensor()
    return logits.argmax(dim=-1)


def max_grad_norm(grad_clip: float) -> float:
    """optim.grad_clip as a clipping bound: 0 disables clipping (the norm is still measured)."""
    return grad_clip if grad_clip > 0 else math.inf


class TrainModule:
    """Base of the three families; see the module docstring. Subclasses set `model_parts`, `optimizers` and
    `schedulers` (and `plain_model` where they step one module) and implement `train_step`."""

    model_parts: list[nn.Module]
    optimizers: Any  # launcher.optim.Optimizers, or the ZeRO engine's adapter
    schedulers: Any  # launcher.schedule.LRSchedulers
    plain_model: Optional[nn.Module] = None  # the Transformer itself, unwrapped (DDP), where one module trains
    # trainer.spike: judges each step's (loss, gradient norm) before its update; True drops it (launcher/spikes.py)
    update_gate: Optional[Callable[[torch.Tensor, torch.Tensor], bool]] = None
    layer_health: Any = None  # trainer.layer_health: a launcher.layer_health.LayerHealth probe, armed at log steps

    def __init__(self, plan: RunPlan, env: DistEnv) -> None:
        self.plan, self.env = plan, env
        self.cfg, self.dims = plan.cfg, plan.dims

    # ------------------------------------------------------------------------------------------ training
    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One optimizer step over this rank's batch (inputs, labels [rank batch, seq_len])."""
        raise NotImplementedError

    def accumulate(
        self, inputs: torch.Tensor, labels: torch.Tensor, forward_backward: Callable[[MicroBatch], torch.Tensor]
    ) -> tuple[torch.Tensor, dict]:
        """Run this rank's batch in trainer.micro_batch_size micro batches through `forward_backward` (the
        family's forward and backward of one micro batch, backpropagating `MicroBatch.term` and returning its
        mean loss, detached) and return this rank's term of the global-batch loss (its micro batches' losses
        weighted by `loss_weights`, over their number; the module docstring says why) and the mean of every
        auxiliary loss the model reported (`plain_model.last_aux_losses`), as device tensors."""
        micro = self.cfg.trainer.micro_batch_size
        pieces = list(zip(inputs.split(micro), labels.split(micro)))
        weights = self.loss_weights([y for _, y in pieces])
        loss_sum = torch.zeros((), device=inputs.device)
        aux_sums: dict[str, torch.Tensor] = {}
        for i, (x, y) in enumerate(pieces):
            piece = MicroBatch(x, y, count=len(pieces), last=i == len(pieces) - 1, weight=weights[i])
            loss_sum += forward_backward(piece).float() * weights[i]
            for name, value in self.plain_model.last_aux_losses.items():
                aux_sums[name] = aux_sums.get(name, 0) + value.float()
        return loss_sum / len(pieces), {name: total / len(pieces) for name, total in aux_sums.items()}

    def loss_weights(self, labels: list[torch.Tensor]) -> torch.Tensor:
        """Per micro batch of this rank (the labels of each), n * dp * k / N: n its labels that count (not
        IGNORE_INDEX), dp the data-parallel degree, k the number of micro batches, N the global batch's counted
        labels (summed over all ranks in one all-reduce, then divided by the ranks that read each data-parallel
        slice: tensor, context and pipeline parallel ranks read the same one). float32 on the device, no host sync;
        computed in float64, so it is exactly 1.0 when every micro batch counts the same labels."""
        from launcher.distributed import sum_over_ranks
        from model.loss import IGNORE_INDEX

        counts = torch.stack([(y != IGNORE_INDEX).sum() for y in labels]).to(torch.float64)
        dp, world = self.dims.dp_degree, self.env.world_size
        total = sum_over_ranks(counts.sum().reshape(1)) / (world // dp)
        return (counts * (dp * len(labels)) / total.clamp(min=1)).to(torch.float32)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return self.schedulers.last_lr

    def train(self, mode: bool = True) -> None:
        for part in self.model_parts:
            part.train(mode)

    def step_is_finite(self, out: StepOutput) -> torch.Tensor:
        """A device flag: the step's loss and gradient norm are finite (launcher/nonfinite.py reads it lazily)."""
        return torch.isfinite(out.loss).all() & torch.isfinite(out.grad_norm.to(out.loss.device)).all()

    def skip_if_not_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """With trainer.skip_nonfinite_steps > 0: True (after dropping the gradients and advancing the lr schedule)
        when the step is not finite on any rank; reading that is a host sync, which the option accepts. Without it:
        False, no sync."""
        if self.cfg.trainer.skip_nonfinite_steps == 0:
            return False
        from launcher.distributed import sum_over_ranks

        finite = torch.isfinite(loss).all() & torch.isfinite(grad_norm.to(loss.device)).all()
        if sum_over_ranks((~finite).float().reshape(1)).item() == 0:
            return False
        self.optimizers.zero_grad()
        self.schedulers.step()
        return True

    def measure_layer_gradients(self) -> None:
        """trainer.layer_health at a log step: the per-group gradient norms, called before clipping."""
        if self.layer_health is not None:
            self.layer_health.measure_gradients()

    def measuring_layer_update(self):
        """trainer.layer_health at a log step: around the optimizer step, the per-group update/weight ratios."""
        return self.layer_health.measuring_update() if self.layer_health is not None else contextlib.nullcontext()

    def spike_drops_update(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        """With trainer.spike on: True (after dropping the gradients, the MoE loads counted and advancing the lr
        schedule, as for a non-finite step) when the gate flags the step and its action drops updates. Called
        after the gradients and their global norm, before the optimizer step, on every rank."""
        if self.update_gate is None or not self.update_gate(loss, grad_norm):
            return False
        self.optimizers.zero_grad()
        self.schedulers.step()
        for part in self.model_parts:  # this batch's expert loads must not move the balancing biases either
            for module in part.modules():
                if hasattr(module, "take_load"):
                    module.take_load()
        return True

    def balance_experts(self, extra: dict[str, torch.Tensor]) -> None:
        """Auxiliary-loss-free MoE balancing (model.moe.expert_bias), once per optimizer step on every rank: each
        layer's selection bias moves against its experts' load over the global batch; the load imbalance (max /
        mean, 1 = balanced) joins the step's figures. Nothing for models without MoE layers."""
        from parallel.expert import update_expert_biases

        imbalance = update_expert_biases(self.model_parts, self.dims)
        if imbalance is not None:
            extra["moe_load_imbalance"] = imbalance.detach()

    def log_extras(self) -> dict[str, float]:
        """Host values to log at log steps only (reading them may wait for the device)."""
        return {}

    def batch_plan_text(self) -> str:
        return f"{self.plan.grad_accum} micro batch(es) of {self.cfg.trainer.micro_batch_size}"

    # ------------------------------------------------------------------------------------------ evaluation
    def eval_batches(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's held-out batches in the shape `eval_loss` takes (unchanged but for pipeline parallel)."""
        return batches

    def eval_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Mean loss of one held-out batch on this rank, or None where this rank computes none."""
        raise NotImplementedError

    def kv_cache_model(self) -> Optional[nn.Module]:
        """The plain module greedy decoding can run one token at a time through a KV cache, or None where the
        layout's forward cannot (sequence-sharded: tensor, context parallel) and decodes by full forwards."""
        return None

    def cannot_generate(self) -> Optional[str]:
        """Why this layout cannot generate text (pipeline parallel), or None: launcher/validation.py's rule, which
        left the generation tasks out with a note before training started."""
        return generation_blocked(self.dims)

    def generate_greedy(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        *,
        stop_ids: Sequence[int] = (),
        pad_id: int = 0,
        stop_when: Optional[Callable[[list[list[int]]], list[bool]]] = None,
    ) -> list[list[int]]:
        """Greedy new tokens of each prompt, each row ended at its first stop id (included), once `stop_when(new
        tokens of every row)` says so, or after max_new_tokens, as model.generation.generate decodes on one
        process: through the KV cache of `kv_cache_model` where the layout has one, else by full forwards of the
        growing sequences (launcher/forward_decoding.py), which every rank runs in lockstep (a call with no prompts
        joins the forwards of the others). Eager; call inside `scoring()`."""
        why_not = self.cannot_generate()
        if why_not is not None:
            raise RuntimeError(f"this layout cannot generate: {why_not}")
        from launcher.forward_decoding import decode_by_forwards
        from model.generation import generate

        model = self.kv_cache_model()
        with torch.compiler.set_stance("force_eager"):
            if model is None:
                return decode_by_forwards(
                    self, prompts, max_new_tokens, stop_ids=stop_ids, pad_id=pad_id, stop_when=stop_when
                )
            if not prompts:
                return []
            return generate(
                model, prompts, max_new_tokens, greedy=True, stop_tokens=stop_ids, pad_id=pad_id, stop_when=stop_when
            )

    # ------------------------------------------------------------------------------------------ downstream scoring
    # Downstream evaluation (launcher/callbacks/downstream_eval.py) scores padded token batches through the layout.
    forward_is_collective: bool = False  # a forward needs every rank (all-gathers, all-to-all, pipeline p2p)

    def scoring_shape(self, rows: int, width: int) -> tuple[int, int]:
        """The (rows, width) a scoring batch of rows x width is padded to for this layout."""
        return rows, width

    def score_batch(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[B, T, 2]: log P(targets[b, t] | tokens[b, :t+1]) and whether it is the argmax, on every rank (in eval
        mode, no gradients; the caller pads `tokens` to `scoring_shape`)."""
        return self.forward_scores(self.scoring_model(), tokens, targets)

    def next_tokens(self, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """[B]: the greedy next token after position at[b] of each row of `tokens` (padded to `scoring_shape`;
        right padding never reaches a real position of a causal model), on every rank: one step of decoding by
        full forwards."""
        return self.forward_greedy(self.scoring_model(), tokens).gather(1, at[:, None]).squeeze(1)

    @contextlib.contextmanager
    def scoring(self):
        """Eval mode for forwards outside training (evaluation, generation), then training mode with every model
        part's parameters resharded and the very objects the optimizer steps: forwards without backward leave
        FSDP's gathered weights registered, and FSDP-wrapped expert-parallel experts other tensors still after a
        reshard (until a backward re-registers them), which a checkpoint at that step would not find in the
        optimizer."""
        self._reshard_fsdp()  # an earlier forward without backward (the held-out loss) may have left them gathered
        registered = [
            (module, name, param)
            for part in self.model_parts
            for module in part.modules()
            for name, param in module.named_parameters(recurse=False)
        ]
        self.train(False)
        try:
            yield
        finally:
            self._reshard_fsdp()
            for module, name, param in registered:
                if module._parameters.get(name) is not param:
                    module._parameters[name] = param
            self.train(True)

    def _reshard_fsdp(self) -> None:
        """FSDP keeps the gathered weights of a forward without backward registered; put the shards back."""
        from torch.distributed.fsdp import FSDPModule

        for part in self.model_parts:
            for module in part.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    def scoring_model(self) -> nn.Module:
        """The module a scoring forward runs: the laid-out one where its forward is part of the layout."""
        return self.plain_model

    @torch.no_grad()
    def forward_per_token(
        self,
        model: nn.Module,
        tokens: torch.Tensor,
        per_token: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        *,
        run_autocast: bool = True,
    ) -> torch.Tensor:
        """`per_token(logits, columns)` ([B, len(columns), ...] from the logits of tokens' columns `columns`) for
        every column of `tokens`, on every rank: eager (a compiled model would recompile per batch shape), under
        the run's autocast unless `run_autocast` is False; a model trained with document masks attends across the
        prefix EOS, as HF exports do. Layouts that cut the sequence (context parallel) run it on their share and
        gather the rest."""
        kwargs = {}
        if self.cfg.model.document_mask_eos_id is not None:
            kwargs["attention_mask"] = torch.ones_like(tokens, dtype=torch.bool)
        columns = torch.arange(tokens.shape[1], device=tokens.device)
        with torch.compiler.set_stance("force_eager"), self.forward_precision(run_autocast):
            return per_token(model(tokens, **kwargs), columns)

    def forward_precision(self, run_autocast: bool):
        """The run's autocast for a scoring forward, or nothing (the parameters' own dtype)."""
        return autocast(self.cfg.trainer.precision, self.env.device) if run_autocast else contextlib.nullcontext()

    def forward_scores(self, model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """token_scores of `model`'s logits for `targets` ([B, T, 2])."""
        return self.forward_per_token(
            model, tokens, lambda logits, columns: token_scores(logits, targets.index_select(1, columns))
        )

    def forward_greedy(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """greedy_ids of `model`'s logits ([B, T]): the argmax next token after every position. Without the run's
        autocast, as the KV-cache decoding of the other layouts (and of one process) runs."""
        return self.forward_per_token(
            model, tokens, lambda logits, columns: greedy_ids(logits)[..., None], run_autocast=False
        )[..., 0]

    # ------------------------------------------------------------------------------------------ state
    def model_state_dict(self) -> dict[str, Any]:
        """The model's weights by unwrapped parameter name (sharded DTensors stay sharded), all parts merged."""
        return merge_disjoint([get_model_state_dict(part) for part in self.model_parts], "model")

    def load_model_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.model_parts:
            own = get_model_state_dict(part)
            set_model_state_dict(part, {key: state[key] for key in own})

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds of this module: tensors under "model"/"optimizer", plain values under
        "schedule" (the checkpointer writes tensors with DCP and plain values as JSON)."""
        return {
            "model": self.model_state_dict(),
            "optimizer": self.optimizers.state_dict(),
            "schedule": self.schedulers.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], directory: Path) -> None:
        """Restore `state` (loaded from the checkpoint in `directory`); the lr schedule last, so the lr of the
        resumed step is this run's."""
        self.load_model_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizer"])
        self.load_native(directory)
        self.schedulers.load_state_dict(state["schedule"])

    def save_native(self, directory: Path) -> None:
        """State kept outside DCP, written into the checkpoint being saved (every rank calls it)."""

    def load_native(self, directory: Path) -> None:
        """Restore what save_native wrote."""


def initial_model(plan: RunPlan, env: DistEnv, init_from: Optional[Path]) -> nn.Module:
    """The plain model, whole on this rank's device, holding the seed's initial weights (or `init_from`'s): what
    unsharded layouts lay out and what DeepSpeed's engine partitions."""
    from launcher.checkpoint import load_model_weights

    torch.manual_seed(plan.cfg.trainer.seed)
    with torch.device(env.device):
        model = model_lib.build(plan.cfg.model)
    model.init_weights()
    if init_from is not None:
        load_model_weights([model], init_from)
    return model


def materialize_model(plan: RunPlan, env: DistEnv, init_from: Optional[Path]):
    """The plain model built from the seed and laid out by `parallelize` (with pp > 1: a parallel.pipeline
    .Pipeline of this rank's stages), holding the single-process run's initial weights, or `init_from`'s.

    Unsharded layouts (single, DDP) build and initialise the model in place from the seed. Sharded ones (FSDP, TP,
    CP, EP, PP) build on the meta device and materialise only their shards; rank 0 initialises the full model on
    CPU from the same seed and `set_model_state_dict(broadcast_from_rank0=True)` scatters it into every rank's
    shards (a sharded random init would give other weights on every layout). That costs one full fp32 copy of the
    model in rank 0's host memory at start-up."""
    from launcher.checkpoint import load_model_weights

    cfg, dims = plan.cfg, plan.dims
    if not dims.shards_parameters:
        return parallelize(initial_model(plan, env, init_from), dims)

    torch.manual_seed(cfg.trainer.seed)
    with torch.device("meta"):
        model = model_lib.build(cfg.model)
    laid_out = parallelize(model, dims)
    parts = getattr(laid_out, "stages", [laid_out])
    full = None
    if env.is_main:
        torch.manual_seed(cfg.trainer.seed)
        with torch.device("cpu"):
            reference = model_lib.build(cfg.model)
        reference.init_weights()
        full = reference.state_dict()
    for part in parts:
        part.to_empty(device=env.device)
        with torch.no_grad():
            (part.module if hasattr(part, "module") else part).init_weights()  # buffers (RoPE tables)
        # A copy per stage: set_model_state_dict writes the module's own (sharded) tensors back into the dict it
        # is given, and rank 0 would then broadcast those, not the full ones, to the next stage.
        set_model_state_dict(
            part,
            dict(full) if full is not None else {},
            options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=dims.pp == 1),
        )
    if init_from is not None:
        load_model_weights(parts, init_from)
    return laid_out
