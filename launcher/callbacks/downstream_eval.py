"""Downstream evaluation in the loop: the eval.tasks (lm-eval YAML, loaded and checked by launcher/validation.py)
every eval.every steps and at the last step, scored by the model being trained under its own layout
(launcher/layout_scorer.py) with the evaluator of `python -m launcher.evaluate` (evaluation/runner.py).

Requests are sharded over data-parallel ranks (tensor/pipeline ranks of one group score the same share); answers
are gathered so every rank aggregates the numbers one process would. Generation requests are not sharded where a
forward is a collective (FSDP, ZeRO-3, tensor, context, expert parallel): every rank decodes all of them in step.
The step's record gets eval/<task>/<metric> (and _stderr) and eval/time_s; the time is outside tokens/s. With
eval.save_results, rank 0 writes <run_dir>/eval/step_<N>/results.json in lm-eval's layout.

Every task is marked with whether the run's shards were decontaminated against this version of it
(evaluation/contamination.py): eval/<task>/decontaminated (1 or 0, every sink) and eval/<task>/decontamination
(decontaminated | unchecked | other_version: metrics.jsonl and the console; wandb takes numbers only), and the
results file's `decontamination`.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import torch.distributed as dist

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.train_modules import StepOutput


class DownstreamEval(Callback):
    def __init__(self, every: int, save_results: bool) -> None:
        self.every, self.save_results = every, save_results
        self.scorer: Optional[Any] = None
        self.decontamination: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> DownstreamEval | None:
        return cls(cfg.eval.every, cfg.eval.save_results) if cfg.eval.tasks else None

    def on_train_start(self, ctx: TrainContext) -> None:
        if ctx.plan.eval_tasks:  # (what the layout leaves out was printed by launcher/train.py before the start)
            from evaluation.contamination import leaf_tasks, task_statuses

            self.scorer = build_scorer(ctx)
            record = ctx.data.batches.decontamination()
            self.decontamination = task_statuses(leaf_tasks(list(ctx.plan.eval_tasks)), record)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if self.scorer is None or not ((self.every > 0 and step % self.every == 0) or ctx.last):
            return
        with ctx.paused():
            start = time.perf_counter()
            results = self.evaluate(ctx)
            elapsed = time.perf_counter() - start
        results.decontamination = self.decontamination
        ctx.record.update({f"eval/{key}": value for key, value in results.flat_metrics().items()})
        ctx.record.update({f"eval/{key}": value for key, value in results.status_metrics().items()})
        ctx.record["eval/time_s"] = elapsed
        if self.save_results and ctx.env.is_main:
            self.write(ctx, step, results)

    def evaluate(self, ctx: TrainContext):
        from evaluation.requests import GenerationRequest
        from evaluation.runner import evaluate

        e, dims = ctx.cfg.eval, ctx.plan.dims
        with ctx.module.scoring():
            return evaluate(
                list(ctx.plan.eval_tasks),
                self.scorer,
                limit=e.limit,
                rank=dims.dp_rank(),
                world_size=dims.dp_degree,
                gather=_gather_by_dp_rank(dims.dp_rank()) if dims.dp_degree > 1 else None,
                bootstrap_iters=e.bootstrap_iters,
                replicated=(GenerationRequest,) if ctx.module.forward_is_collective else (),
            )

    def write(self, ctx: TrainContext, step: int, results) -> None:
        from model.checkpoint_io import atomic_write_text

        data = results.to_lm_eval_json()
        e = ctx.cfg.eval
        data["config"] = {
            "model": "loom",
            "model_args": f"run_dir={ctx.run_dir},step={step}",
            "batch_size": self.scorer.batch_size,
            "limit": e.limit,
            "max_length": self.scorer.max_length,
            "bootstrap_iters": e.bootstrap_iters,
            "parallel": ctx.cfg.parallel.name,
        }
        directory = ctx.run_dir / "eval" / f"step_{step}"
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            directory / "results.json", json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
        )


def build_scorer(ctx: TrainContext):
    """The LayoutScorer of the run: the data's tokenizer with its special tokens (as HFLM reads them from the
    run's export), eval.max_length (null: model.max_seq_len), eval.batch_size (pipeline: the training per-rank
    batch, the only shape its stages take)."""
    from evaluation.token_requests import TokenRules
    from launcher.data import resolve_data_dir
    from launcher.layout_scorer import LayoutScorer
    from model.hf.files import special_tokens

    cfg = ctx.cfg
    if ctx.data.tokenizer is None:
        raise RuntimeError(
            f"eval.tasks needs the data's tokenizer (tokenizer.json beside the shards in {cfg.data.path}); "
            f"none was found: re-run the tokenize step, or set eval.tasks=[]"
        )
    specials = special_tokens(resolve_data_dir(cfg.data))
    eos = specials.eos[1] if specials.eos is not None else ctx.data.eos_id
    if eos is None:
        raise RuntimeError("eval.tasks: the data's tokenizer names no end-of-sequence token; set eval.tasks=[]")
    rules = TokenRules(ctx.data.tokenizer, eos_id=eos, bos_id=specials.bos[1] if specials.bos else None)
    pad = specials.pad[1] if specials.pad is not None else eos
    batch_size = ctx.plan.rank_batch if ctx.plan.dims.pp > 1 else cfg.eval.batch_size
    return LayoutScorer(
        ctx.module,
        ctx.env.device,
        rules,
        max_length=cfg.eval.max_length or cfg.model.max_seq_len,
        batch_size=batch_size,
        pad_id=pad,
    )


def _gather_by_dp_rank(dp_rank: int):
    """A gather for evaluation.runner over data-parallel ranks: every rank's answers are gathered over the world
    and one copy per data-parallel rank kept, in dp-rank order (tensor/pipeline peers hold the same answers)."""

    def gather(answers: list) -> list[list]:
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (dp_rank, answers))
        by_rank: dict[int, list] = {}
        for rank, got in everyone:
            by_rank.setdefault(rank, got)
        return [by_rank[rank] for rank in sorted(by_rank)]

    return gather
