"""`python -m data_pipeline ...`: run a pipeline, one step, train the quality classifier, or generate a corpus.

Configuration is Hydra (configs/pipeline.yaml and configs/pipeline/*.yaml) composed with the compose API rather
than `@hydra.main`, because the first argument is a sub-command and because a data run should not create
Hydra's timestamped output directories. A structured schema makes a misspelt key fail at start.
"""
from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from data_pipeline.executors.base import PipelinePlan, StepSpec
from data_pipeline.io import InputSpec, describe_input
from data_pipeline.steps import STEP_NAMES, build_step

log = logging.getLogger("data_pipeline")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class StepConfig:
    name: str = MISSING
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineStepsConfig:
    name: str = "default"
    steps: list[StepConfig] = field(default_factory=list)


@dataclass
class SlurmConfig:
    partition: Optional[str] = None
    account: Optional[str] = None
    time: str = "01:00:00"
    cpus_per_task: int = 1
    mem: str = "4G"
    max_parallel: int = 0
    python: Optional[str] = None
    sbatch_args: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class PipelineRunConfig:
    pipeline: PipelineStepsConfig = field(default_factory=PipelineStepsConfig)
    input: str = MISSING
    output: str = MISSING
    text_key: str = "text"
    id_key: str = "id"
    input_split: str = "train"
    max_doc_chars: int = 1_000_000
    tasks: int = 4
    workers: int = 1
    output_format: str = "jsonl"
    executor: str = "local"
    seed: int = 0
    eval_sets: list[str] = field(default_factory=list)
    step_params: dict[str, Any] = field(default_factory=dict)
    report: bool = True
    wandb: bool = False
    wandb_project: str = "loom-data"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="pipeline_schema", node=PipelineRunConfig)


# Free-form parameter dicts (a step's keyword arguments): an override may add a key there without Hydra's `+`.
_FREE_FORM = re.compile(r"^(step_params|pipeline\.steps\.\d+\.params)\.")


def _allow_new_keys(overrides: list[str]) -> list[str]:
    """`step_params.c4.min_sentences=3` -> `++step_params.c4.min_sentences=3` (add or override), so step
    parameters are overridden as configs/pipeline.yaml documents; a wrong key still fails, in the step."""
    return [f"++{o}" if _FREE_FORM.match(o) else o for o in overrides]


def compose_config(overrides: list[str], config_dir: Path = CONFIG_DIR) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register_schema()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name="pipeline", overrides=_allow_new_keys(overrides))


def build_plan(cfg: DictConfig, single_step: Optional[str] = None) -> tuple[PipelinePlan, list[str]]:
    """The plan to run and the names of steps skipped because their config makes them no-ops."""
    for key in ("input", "output"):
        if OmegaConf.is_missing(cfg, key):
            raise ValueError(f"{key}= is required (e.g. input=data/raw output=data/clean)")
    if single_step is not None:
        specs = [StepSpec(single_step, OmegaConf.to_container(cfg.step_params, resolve=True, throw_on_missing=True))]
    else:
        specs = [StepSpec(s.name, OmegaConf.to_container(s.params, resolve=True, throw_on_missing=True)) for s in cfg.pipeline.steps]
        if not specs:
            raise ValueError(f"pipeline={cfg.pipeline.name} has no steps")
    enabled, skipped = [], []
    for spec in specs:
        (enabled if build_step(spec.name, spec.params).enabled() else skipped).append(spec)
    if not enabled:
        raise ValueError(f"every step is disabled by its configuration: {[s.name for s in skipped]}")
    input_spec = InputSpec(cfg.input, cfg.text_key, cfg.id_key, cfg.input_split, cfg.max_doc_chars)
    describe_input(input_spec)  # a missing input fails here, before any task starts
    plan = PipelinePlan(
        input=input_spec,
        output=str(Path(cfg.output).resolve()),
        steps=enabled,
        tasks=cfg.tasks,
        output_format=cfg.output_format,
        seed=cfg.seed,
    )
    return plan, [s.name for s in skipped]


def run_pipeline(cfg: DictConfig, single_step: Optional[str] = None) -> dict[str, dict]:
    plan, skipped = build_plan(cfg, single_step)
    for name in skipped:
        log.info("step %s skipped: disabled by its configuration", name)
    if cfg.executor == "local":
        from data_pipeline.executors.local import LocalExecutor

        stats = LocalExecutor(plan, workers=cfg.workers).run()
    elif cfg.executor == "slurm":
        from data_pipeline.executors.slurm import SlurmExecutor

        SlurmExecutor(plan, cfg.slurm, report=cfg.report).submit()
        return {}
    else:
        raise ValueError(f"executor={cfg.executor!r}: use local or slurm")
    if cfg.report:
        from data_pipeline.report import write_report

        write_report(plan.root, [s.name for s in plan.steps], skipped=skipped, wandb_project=cfg.wandb_project if cfg.wandb else None)
    return stats


def _key_values(args: list[str], allowed: dict[str, Any], command: str) -> dict[str, Any]:
    values = dict(allowed)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"{command}: expected key=value with key in {sorted(allowed)}, got {arg!r}")
        if isinstance(allowed[key], bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{command}: {key}={value!r}: use true or false")
            values[key] = value.lower() == "true"
        else:
            values[key] = type(allowed[key])(value) if allowed[key] is not None else value
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"{command}: missing {', '.join(f'{k}=' for k in missing)}")
    return values


USAGE = f"""usage: python -m data_pipeline COMMAND [key=value ...]
commands:
  run                 run a pipeline: pipeline=default input=PATH output=DIR [tasks=4 workers=4 executor=slurm ...]
  {' | '.join(STEP_NAMES)}
                      run one step: input=PATH output=DIR [step_params.KEY=VALUE ...]
  train-classifier    positive=FILE negative=FILE output=MODEL.bin [text_key=text epoch=10 dim=32 bucket=200000
                      quantize=true cutoff=10000 holdout=0.1]; prints held-out precision and recall
  generate            write the synthetic corpus: output=DIR [n_clean=1000 seed=0 files=1]
Overrides are Hydra syntax; see configs/pipeline.yaml for every key."""


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    try:
        if command == "run":
            run_pipeline(compose_config(args))
        elif command in STEP_NAMES:
            run_pipeline(compose_config(args), single_step=command)
        elif command == "train-classifier":
            from data_pipeline.steps.classifier import train_classifier

            opts = _key_values(args, {"positive": None, "negative": None, "output": None, "text_key": "text", "epoch": 10,
                                      "dim": 32, "bucket": 200_000, "quantize": True, "cutoff": 10_000, "holdout": 0.1}, command)
            print(train_classifier(**opts).summary())
        elif command == "generate":
            from data_pipeline.synthetic import generate_corpus, write_corpus

            opts = _key_values(args, {"output": None, "n_clean": 1000, "seed": 0, "files": 1}, command)
            paths = write_corpus(generate_corpus(n_clean=opts["n_clean"], seed=opts["seed"]), opts["output"], files=opts["files"])
            print({k: str(v) for k, v in paths.items()})
        else:
            print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
            return 2
    except (ValueError, OmegaConfBaseException, HydraException) as exc:  # bad configuration: name the key
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0] + (f" (key: {key})" if key else "")
        if isinstance(exc, HydraException) and exc.__cause__ is not None:
            message += f": {str(exc.__cause__).splitlines()[0]}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
