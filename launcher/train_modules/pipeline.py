"""The pipeline-parallel train module: this rank's stage modules under a torch.distributed.pipelining schedule.

The schedule runs the rank's whole batch in parallel.pp_microbatches microbatches (trainer.micro_batch_size does
not apply) and only the last stage sees the loss. A rank holds one stage module, or several (interleaved and V
schedules); each is a model part with its own AdamW and lr schedule in the shared containers, so checkpoints name
everything by the full model's parameter names and load onto any other layout. Every pp rank of a data-parallel
group reads the same batch; the first stage feeds the tokens, the last computes the loss. The gradient norm sums
squared norms over the pp group (and this rank's stages), so it is the norm of the whole model's gradient.
Held-out evaluation goes forward only through the same schedule, in batches of the training shape.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from launcher.distributed import DistEnv
from launcher.optim import Optimizers
from launcher.schedule import LRSchedulers
from launcher.train_modules.base import (
    StepOutput,
    TrainModule,
    autocast,
    materialize_model,
    max_grad_norm,
    token_scores,
)
from launcher.validation import RunPlan
from parallel import clip_grad_norm_, loss_context

log = logging.getLogger(__name__)


class PipelineTrainModule(TrainModule):
    def __init__(self, plan: RunPlan, env: DistEnv, init_from: Optional[Path] = None) -> None:
        super().__init__(plan, env)
        self.pipeline = materialize_model(plan, env, init_from)  # parallel.pipeline.Pipeline
        self.model_parts = list(self.pipeline.stages)
        self.optimizers = Optimizers(self.model_parts, self.cfg.optim, env.device.type)
        self.schedulers = LRSchedulers(self.optimizers.optimizers, self.cfg.schedule, self.cfg.trainer.max_steps)
        self.pp_group = self.dims.submesh("pp").get_group()

    def batch_plan_text(self) -> str:
        micro = self.dims.cfg.pp_microbatches
        return f"{micro} pipeline microbatches of {self.plan.rank_batch // micro}"

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        with loss_context(self.dims), autocast(self.cfg.trainer.precision, self.env.device):
            loss: Optional[torch.Tensor] = self.pipeline.step(inputs, labels)
        self.measure_layer_gradients()
        grad_norm = clip_grad_norm_(
            [p for part in self.model_parts for p in part.parameters()],
            max_grad_norm(self.cfg.optim.grad_clip),
            extra_group=self.pp_group,
        )
        # Only last-stage ranks (world/pp of them) hold a loss: they contribute pp x loss, the others 0, so the
        # mean over all ranks is the mean over the last-stage ranks.
        if loss is None:
            local = torch.zeros((), device=self.env.device)
        else:
            local = loss.detach().float().to(self.env.device) * self.dims.pp
        if self.skip_if_not_finite(local, grad_norm):
            return StepOutput(local, grad_norm, skipped=True)
        if self.spike_drops_update(local, grad_norm):
            return StepOutput(local, grad_norm)
        with self.measuring_layer_update():
            self.optimizers.step()
        self.optimizers.zero_grad()
        self.schedulers.step()
        extra: dict[str, torch.Tensor] = {}
        self.balance_experts(extra)
        return StepOutput(local, grad_norm, extra)

    def eval_batches(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's held-out rows in batches of the training per-rank batch size: pipeline stages fix their
        receive-buffer shapes at the first step, so evaluation must send the same shape."""
        regrouped = whole_batches(batches, self.plan.rank_batch)
        held_out = sum(b.shape[0] for b in batches)
        if batches and not regrouped:
            micro = self.cfg.trainer.micro_batch_size
            log.info(
                "evaluation is skipped under pipeline parallel: it runs whole per-rank batches of %d rows (the "
                "training shape) but this rank has %d held-out rows; set trainer.eval_batches >= %d (x "
                "trainer.micro_batch_size=%d rows, >= the global batch) with enough held-out data "
                "(data.val_fraction)",
                self.plan.rank_batch,
                held_out,
                -(-self.plan.global_batch // micro),
                micro,
            )
        elif held_out % self.plan.rank_batch:
            log.info(
                "pipeline-parallel evaluation uses %d of this rank's %d held-out rows (whole batches of %d)",
                len(regrouped) * self.plan.rank_batch,
                held_out,
                self.plan.rank_batch,
            )
        return regrouped

    def eval_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        with loss_context(self.dims), autocast(self.cfg.trainer.precision, self.env.device):
            return self.pipeline.eval_loss(inputs, labels)

    forward_is_collective = True

    def scoring_shape(self, rows: int, width: int) -> tuple[int, int]:
        """The training batch's shape: stages fixed their receive buffers at the first step (validation keeps
        eval.max_length <= data.seq_len and the scorer's batch size at the per-rank batch)."""
        if rows > self.plan.rank_batch or width > self.cfg.data.seq_len:
            raise ValueError(
                f"a scoring batch of {rows} x {width} does not fit the pipeline's {self.plan.rank_batch} x "
                f"{self.cfg.data.seq_len}"
            )
        return self.plan.rank_batch, self.cfg.data.seq_len

    @torch.no_grad()
    def score_batch(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward only through the schedule, the last stage turning its logits into token scores in place of
        the loss; the scores are then summed over the pp group (zeros elsewhere), so every stage holds them."""
        import torch.distributed as dist

        with autocast(self.cfg.trainer.precision, self.env.device):
            scores = self.pipeline.forward_results(tokens, targets, token_scores)
        if scores is None:
            scores = torch.zeros((*tokens.shape, 2), device=self.env.device)
        scores = scores.to(self.env.device).contiguous()
        dist.all_reduce(scores, group=self.pp_group)
        return scores

    def next_tokens(self, tokens: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"greedy decoding under {self.cannot_generate()}")


def whole_batches(batches: list[torch.Tensor], rows_per_batch: int) -> list[torch.Tensor]:
    """The rows of `batches` regrouped into batches of `rows_per_batch`; an incomplete last batch is dropped."""
    if not batches or rows_per_batch < 1:
        return []
    rows = torch.cat(batches)
    whole = rows.shape[0] // rows_per_batch
    return list(rows[: whole * rows_per_batch].split(rows_per_batch)) if whole else []
