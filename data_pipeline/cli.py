"""`python -m data_pipeline ...`: run a pipeline, one step, train the quality classifier, or generate a corpus.

Configuration is Hydra (configs/pipeline.yaml and configs/pipeline/*.yaml) composed with the compose API rather
than `@hydra.main`, because the first argument is a sub-command and because a data run should not create
Hydra's timestamped output directories. The dataclasses below are the one source of every run key: its type, its
default and a one-line doc; the YAML files hold only what a choice changes (the steps of each pipeline). A
misspelt key fails at start; `--cfg job` prints the composed config, as Hydra does.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cluster.config import ClusterConfig
from data_pipeline.executors.base import PipelinePlan, StepSpec, TaskFailed
from data_pipeline.quarantine import QuarantineExceeded
from data_pipeline.readers import INPUT_FORMATS, InputSpec, describe_input
from data_pipeline.steps import STEP_NAMES, build_step

log = logging.getLogger("data_pipeline")
EXECUTORS = ("local", "slurm", "ray")  # where the tasks run: this machine, Slurm array jobs, a Ray cluster
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class StepConfig:
    name: str = MISSING  # a step of data_pipeline/steps (normalize, exact_dedup, ..., tokenize)
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the step's class


@dataclass
class PipelineStepsConfig:
    name: str = MISSING  # the pipeline's name, as its file configs/pipeline/<name>.yaml
    steps: list[StepConfig] = field(default_factory=list)  # run in this order, each reading the previous one's output


@dataclass
class PipelineRunConfig:
    pipeline: PipelineStepsConfig = field(default_factory=PipelineStepsConfig)  # group: configs/pipeline/*.yaml
    input: str = MISSING  # .jsonl[.gz|.zst]/.parquet/.txt file, directory or glob; a saved `datasets` dir; a hub name
    output: str = MISSING  # output directory (its layout: data_pipeline/executors/base.py)
    text_key: str = "text"  # field holding a document's text
    id_key: str = "id"  # field holding its id; absent: "<file>:<line>"
    input_split: str = "train"  # split of a DatasetDict / hub dataset
    max_doc_chars: int = 1_000_000  # longer documents are quarantined
    input_format: str = "text"  # text | chat: rows are conversations (`messages`, or prompt/completion) for SFT
    max_quarantine_fraction: Optional[float] = None  # fail the run when more of the rows read are quarantined (0.01)
    keep_intermediate: bool = False  # also write every step's kept documents (<output>/<step>/), for inspection
    checkpoint_rows: int = 10_000  # a task commits its progress every N input rows and resumes there (0: never)
    tasks: int = 4  # shards; fixed for a run (results depend on it, not on workers)
    workers: int = 1  # tasks running at once (local: processes; slurm: the array's % limit; ray: tasks in flight)
    output_format: str = "jsonl"  # jsonl | parquet
    executor: str = "local"  # local | slurm | ray (EXECUTORS)
    ray_address: Optional[str] = None  # executor=ray: cluster to join (host:port); None: RAY_ADDRESS, else a local Ray
    ray_max_retries: int = 3  # executor=ray: reruns of a task whose worker or node died (a Python error is not rerun)
    seed: int = 0  # passed to every task (TaskContext.seed) for steps that draw at random
    eval_sets: list[str] = field(default_factory=list)  # decontaminate's files: JSONL with text_key, or one per line
    decontaminate_tasks: list[str] = field(default_factory=list)  # decontaminate against these evaluator tasks
    decontaminate_task_dirs: list[str] = field(default_factory=list)  # their YAML directories (eval.task_dirs)
    step_params: dict[str, Any] = field(default_factory=dict)  # parameters of the step when running a single step
    report: bool = True  # write report.md/.html, summary.json and plots at the end
    wandb: bool = False  # also log the report to Weights & Biases
    wandb_project: str = "loom-data"  # W&B project when wandb=true
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # group: configs/cluster/; executor=slurm only


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
    # Absolute paths in the plan: Slurm tasks (and anything else reading plan.json) may run in another directory.
    if cfg.eval_sets:
        cfg.eval_sets = [os.path.abspath(p) for p in cfg.eval_sets]
    if cfg.decontaminate_task_dirs:
        cfg.decontaminate_task_dirs = [os.path.abspath(p) for p in cfg.decontaminate_task_dirs]
    if single_step is not None:
        specs = [StepSpec(single_step, OmegaConf.to_container(cfg.step_params, resolve=True, throw_on_missing=True))]
    else:
        specs = [
            StepSpec(s.name, OmegaConf.to_container(s.params, resolve=True, throw_on_missing=True))
            for s in cfg.pipeline.steps
        ]
        if not specs:
            raise ValueError(f"pipeline={cfg.pipeline.name} has no steps")
    enabled, skipped = [], []
    for spec in specs:
        (enabled if build_step(spec.name, spec.params).enabled() else skipped).append(spec)
    if not enabled:
        raise ValueError(f"every step is disabled by its configuration: {[s.name for s in skipped]}")
    if cfg.input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format={cfg.input_format}: choose one of {list(INPUT_FORMATS)}")
    input_spec = InputSpec(cfg.input, cfg.text_key, cfg.id_key, cfg.input_split, cfg.max_doc_chars, cfg.input_format)
    if describe_input(input_spec) != "hub":  # a missing input fails here, before any task starts
        input_spec.path = os.path.abspath(cfg.input)
    plan = PipelinePlan(
        input=input_spec,
        output=str(Path(cfg.output).resolve()),
        steps=enabled,
        tasks=cfg.tasks,
        output_format=cfg.output_format,
        seed=cfg.seed,
        max_quarantine_fraction=cfg.max_quarantine_fraction,
        keep_intermediate=cfg.keep_intermediate,
        checkpoint_rows=cfg.checkpoint_rows,
    )
    return plan, [s.name for s in skipped]


def run_pipeline(
    cfg: DictConfig, single_step: Optional[str] = None, wait: bool = False, dry_run: bool = False
) -> dict[str, dict]:
    if cfg.executor not in EXECUTORS:
        raise ValueError(f"executor={cfg.executor!r}: use one of {', '.join(EXECUTORS)}")
    if dry_run and cfg.executor != "slurm":
        raise ValueError(f"--dry-run prints the sbatch commands of executor=slurm (executor={cfg.executor} has none)")
    if cfg.ray_max_retries < 0:
        raise ValueError(f"ray_max_retries={cfg.ray_max_retries}: must be >= 0 (0: a task whose worker dies fails)")
    plan, skipped = build_plan(cfg, single_step)
    for name in skipped:
        log.info("step %s skipped: disabled by its configuration", name)
    if cfg.executor in ("local", "ray"):
        from data_pipeline.quarantine import summary

        if cfg.executor == "local":
            from data_pipeline.executors.local import LocalExecutor

            executor = LocalExecutor(plan, workers=cfg.workers)
        else:
            from data_pipeline.executors.ray import RayExecutor

            executor = RayExecutor(plan, cfg.ray_address, workers=cfg.workers, max_retries=cfg.ray_max_retries)
        stats = executor.run()
        print(summary(stats[plan.steps[0].name], plan.root), flush=True)
    else:
        from data_pipeline.executors.slurm import SlurmExecutor, wait_for_jobs

        executor = SlurmExecutor(plan, OmegaConf.to_object(cfg.cluster), workers=cfg.workers, report=cfg.report)
        jobs = executor.submit(dry_run=dry_run)
        if not dry_run:
            print(
                f"submitted {len(jobs)} job(s) {jobs[0].job_id}..{jobs[-1].job_id}; logs in {executor.log_dir}",
                flush=True,
            )
            if wait:
                wait_for_jobs(plan, jobs)
        return {}
    if cfg.report:
        from data_pipeline.report import write_report

        write_report(
            plan.root,
            [s.name for s in plan.steps],
            skipped=skipped,
            wandb_project=cfg.wandb_project if cfg.wandb else None,
        )
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
                      executor=slurm takes cluster=<name> cluster.KEY=VALUE, and --wait (follow the jobs, exit
                      non-zero naming a task that failed) or --dry-run (print the sbatch commands);
                      executor=ray joins ray_address=HOST:PORT (else RAY_ADDRESS, else starts a local Ray)
  {" | ".join(STEP_NAMES)}
                      run one step: input=PATH output=DIR [step_params.KEY=VALUE ...]
  preference          preference JSONL -> DPO shards: input=FILE|DIR output=DIR tokenizer=HF_DIR
                      [pairs_per_shard=10000 max_quarantine_fraction=0.01] (data_pipeline/preference.py)
  train-classifier    positive=FILE negative=FILE output=MODEL.bin [text_key=text epoch=10 dim=32 bucket=200000
                      quantize=true cutoff=10000 holdout=0.1]; prints held-out precision and recall
  generate            write the synthetic corpus: output=DIR [n_clean=1000 seed=0 files=1]
Overrides are Hydra syntax. Every key, its default and its meaning: PipelineRunConfig in data_pipeline/cli.py.
`run --cfg job [--resolve] [key=value ...]` (or a step name instead of run) prints the composed config and exits."""


def _inspect_flags(args: list[str]) -> tuple[list[str], bool, bool]:
    """Hydra's `--cfg job` (print the composed config, run nothing) and `--resolve`, taken out of the overrides."""
    rest, show, resolve = [], False, False
    it = iter(args)
    for arg in it:
        if arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            value = arg.partition("=")[2] if "=" in arg else next(it, None)
            if value != "job":
                raise ValueError(f"--cfg {value}: only `--cfg job` (the run's config) exists here")
            show = True
        elif arg == "--resolve":
            resolve = True
        else:
            rest.append(arg)
    return rest, show, resolve


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    flags = {a for a in argv[1:] if a in ("--wait", "--dry-run")}  # executor=slurm: follow the chain / print it
    argv = argv[:1] + [a for a in argv[1:] if a not in flags]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    try:
        if flags and command != "run" and command not in STEP_NAMES:
            raise ValueError(f"{' '.join(sorted(flags))}: only for `run` and single steps with executor=slurm")
        if command == "run" or command in STEP_NAMES:
            overrides, show, resolve = _inspect_flags(args)
            cfg = compose_config(overrides)
            if show:
                print(OmegaConf.to_yaml(cfg, resolve=resolve), end="")
                return 0
            run_pipeline(
                cfg,
                single_step=None if command == "run" else command,
                wait="--wait" in flags,
                dry_run="--dry-run" in flags,
            )
        elif command == "train-classifier":
            from data_pipeline.steps.classifier import train_classifier

            opts = _key_values(
                args,
                {
                    "positive": None,
                    "negative": None,
                    "output": None,
                    "text_key": "text",
                    "epoch": 10,
                    "dim": 32,
                    "bucket": 200_000,
                    "quantize": True,
                    "cutoff": 10_000,
                    "holdout": 0.1,
                },
                command,
            )
            print(train_classifier(**opts).summary())
        elif command == "preference":
            from data_pipeline.preference import build_preference_shards

            opts = _key_values(
                args,
                {
                    "input": None,
                    "output": None,
                    "tokenizer": None,
                    "pairs_per_shard": 10_000,
                    "max_quarantine_fraction": -1.0,  # < 0: no limit
                },
                command,
            )
            fraction = opts.pop("max_quarantine_fraction")
            inputs = [opts.pop("input")]
            report = build_preference_shards(inputs, **opts, max_quarantine_fraction=None if fraction < 0 else fraction)
            print(report.summary())
        elif command == "generate":
            from data_pipeline.synthetic import generate_corpus, write_corpus

            opts = _key_values(args, {"output": None, "n_clean": 1000, "seed": 0, "files": 1}, command)
            paths = write_corpus(
                generate_corpus(n_clean=opts["n_clean"], seed=opts["seed"]), opts["output"], files=opts["files"]
            )
            print({k: str(v) for k, v in paths.items()})
        else:
            print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
            return 2
    except TaskFailed as exc:  # a bug or an environment failure inside a task: the traceback, then where it was
        traceback.print_exception(exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except QuarantineExceeded as exc:  # the input is mostly bad: the whole summary, per reason and file
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # a Slurm job failed for good (--wait), or sbatch refused a job
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OmegaConfBaseException, HydraException) as exc:  # bad configuration: name the key
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0] + (f" (key: {key})" if key else "")
        if isinstance(exc, HydraException) and exc.__cause__ is not None:
            message += f": {str(exc.__cause__).splitlines()[0]}"
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0
