"""Downstream evaluation of a saved model (`python -m launcher.evaluate`, launcher/evaluate.py): load a Loom run
directory, checkpoint or Hugging Face directory as a LoomScorer, load lm-eval YAML tasks, run the evaluator and
write lm-eval's files.

Data-parallel under torchrun or srun: every rank holds a whole model copy and scores its share of the requests
(rank r: requests[r::world_size] of each kind, evaluation/runner.py); `all_gather_object` gives every rank every
answer, so all ranks aggregate the same numbers as one process would, and rank 0 writes:
  <output>/results.json   lm-eval's results layout (results, configs, versions, n-shot, higher_is_better, ...)
  <output>/results.md     one row per task and metric (value, stderr, documents)
  <output>/samples_<task>.jsonl   with eval.log_samples: one record per document, as lm-eval's --log_samples
Every task is marked with whether the model's training data was decontaminated against it (results.json's
`decontamination`, a column of results.md): the record comes from the checkpoint evaluated (train_state.json's
`data_decontamination`, written from the shards' headers); a Hugging Face directory or a checkpoint without one
marks every task unchecked (evaluation/contamination.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.config import EvalTasksConfig
from model.checkpoint_io import atomic_write_text


class EvaluateConfigError(ValueError):
    """A command-line setting the evaluation cannot use; the message names the key and the fix."""


@dataclass
class EvalSettings(EvalTasksConfig):
    """The shared task keys (launcher/config.py's EvalTasksConfig: tasks, task_dirs, limit, batch_size,
    max_length, bootstrap_iters) and what only the offline command needs."""

    output: str = ""  # directory for results.json, results.md and the samples
    log_samples: bool = False
    dtype: str = "fp32"  # the model's compute dtype (fp32 | bf16 | fp16)
    device: str = "auto"  # auto (cuda when visible) | cpu | cuda
    timeout_s: int = 1800  # process-group timeout (one rank failing must not hang the others forever)


@dataclass
class EvaluateConfig:
    eval: EvalSettings = field(default_factory=EvalSettings)


def parse_overrides(overrides: list[str]) -> EvalSettings:
    """`eval.key=value` overrides (Hydra's syntax: lists as [a,b]) onto the defaults; a misspelt key or a wrong
    type is refused with the valid keys named."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.structured(EvaluateConfig)
    for item in overrides:
        if "=" not in item or not item.startswith("eval."):
            raise EvaluateConfigError(
                f"{item!r}: settings are eval.<key>=<value> (keys: {', '.join(EvalSettings.__dataclass_fields__)})"
            )
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise EvaluateConfigError(f"{exc} (keys: eval.{', eval.'.join(EvalSettings.__dataclass_fields__)})") from exc
    settings: EvalSettings = OmegaConf.to_object(merged).eval
    if not settings.tasks:
        raise EvaluateConfigError("eval.tasks is empty: name the tasks, e.g. eval.tasks=[hellaswag,arc_easy]")
    if not settings.task_dirs:
        raise EvaluateConfigError("eval.task_dirs is empty: give the directories of the task YAML files")
    if not settings.output:
        raise EvaluateConfigError("eval.output is empty: give the directory for results.json")
    from launcher.validation import ConfigError, check_eval_keys

    try:
        check_eval_keys(settings)
    except ConfigError as exc:
        raise EvaluateConfigError(str(exc)) from exc
    return settings


def run_evaluation(model_path: str | os.PathLike, settings: EvalSettings) -> Any:
    """Evaluate the model at `model_path` on settings.tasks; rank 0 writes the results to settings.output and
    returns them (the other ranks, which hold the same numbers, return None)."""
    from evaluation.contamination import leaf_tasks, task_statuses
    from evaluation.loom_scorer import LoomScorer
    from evaluation.runner import evaluate
    from evaluation.tasks import load_tasks
    from launcher.distributed import init_distributed, shutdown

    if not Path(model_path).exists():
        raise EvaluateConfigError(f"{model_path}: no such run directory, checkpoint or Hugging Face directory")
    tasks = load_tasks(list(settings.tasks), list(settings.task_dirs))  # bad task input fails before the model
    env = init_distributed(settings.device, settings.timeout_s)
    try:
        scorer = LoomScorer.load(
            model_path,
            batch_size=settings.batch_size,
            dtype=settings.dtype,
            device=str(env.device),
            max_length=settings.max_length,
        )
        results = evaluate(
            tasks,
            scorer,
            limit=settings.limit,
            log_samples=settings.log_samples,
            rank=env.rank,
            world_size=env.world_size,
            gather=_all_gather if env.distributed else None,
            bootstrap_iters=settings.bootstrap_iters,
        )
        if env.is_main:
            results.decontamination = task_statuses(leaf_tasks(tasks), training_decontamination(model_path))
            write_outputs(results, Path(settings.output), model_path, settings)
    finally:
        shutdown()
    return results if env.is_main else None


def training_decontamination(model_path: str | os.PathLike) -> dict | None:
    """The decontamination record of the data the model at `model_path` was trained on: from the checkpoint's
    train_state.json (a run directory: its newest checkpoint that verifies, the one evaluated); None for a
    Hugging Face directory or a checkpoint that records none."""
    from launcher.checkpoint import TRAIN_STATE_FILE
    from model.checkpoint_io import CheckpointError, resolve_checkpoint_dir

    try:
        checkpoint = resolve_checkpoint_dir(model_path)
    except CheckpointError:
        return None  # not a Loom checkpoint or run directory (a Hugging Face directory)
    path = checkpoint / TRAIN_STATE_FILE
    if not path.is_file():
        return None  # a model-only checkpoint (an import or export): no training data to speak of
    return json.loads(path.read_text()).get("data_decontamination")


def _all_gather(answers: list) -> list[list]:
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, answers)
    return gathered


def write_outputs(results: Any, output: Path, model_path: str | os.PathLike, settings: EvalSettings) -> None:
    """results.json (lm-eval's layout, with the model and settings under "config"), results.md and, with
    log_samples, samples_<task>.jsonl; each written atomically."""
    data = results.to_lm_eval_json()
    data["config"] = {
        "model": "loom",
        "model_args": f"pretrained={os.fspath(model_path)}",
        "batch_size": settings.batch_size,
        "limit": settings.limit,
        "dtype": settings.dtype,
        "bootstrap_iters": settings.bootstrap_iters,
    }
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "results.json", json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(output / "results.md", results.to_markdown())
    if settings.log_samples:
        for task, records in results.samples.items():
            lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
            atomic_write_text(output / f"samples_{task}.jsonl", lines)
