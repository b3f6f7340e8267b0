"""The ablation spec (configs/ablation/*.yaml) and its plan: every variant and seed as one training run, every check
done before anything runs.

A spec names variants (each a data source: token shards, or raw input plus a data pipeline and its overrides) and
one training recipe they share (training overrides, token budget, evaluation points, seeds, tasks). `plan()` reads
it with OmegaConf onto the dataclasses below (a misspelt key fails naming it), composes each variant's pipeline
config with data_pipeline's own `compose_config` (an override that does not exist fails here, naming the variant)
and each run's training config with the launcher's (`launcher.job_config.compose`), and derives every run's steps
from the budget: a variant whose overrides make it train another number of tokens, or evaluate at other token
counts, is refused naming the variant and the key, since its scores would not be comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launcher.validation import ConfigError

RUNS_DIR, DATA_DIR = "runs", "data"
# Training keys the ablation sets itself from the recipe: a variant or the shared overrides may not set them.
OWNED_KEYS = ("trainer.max_steps", "trainer.run_dir", "trainer.seed", "eval.tasks", "eval.task_dirs", "eval.every")


@dataclass
class VariantSpec:
    shards: Optional[str] = None  # a directory of packed token shards (tokenizer.json beside them)
    input: Optional[str] = None  # raw input of the data pipeline (any input= it reads); needs `pipeline`
    pipeline: Optional[str] = None  # configs/pipeline/<name>.yaml; it must end with the tokenize step
    pipeline_overrides: list[str] = field(default_factory=list)  # `python -m data_pipeline run` overrides
    overrides: list[str] = field(default_factory=list)  # training overrides of this variant only


@dataclass
class RecipeSpec:
    tokens: int = MISSING  # training tokens per run, the same for every variant
    eval_every_tokens: int = 0  # evaluate every this many tokens (0: only at the end); the same for every variant
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per variant and seed (trainer.seed)
    tasks: list[str] = field(default_factory=list)  # eval.tasks: lm-eval task names
    task_dirs: list[str] = field(default_factory=list)  # eval.task_dirs: their YAML directories
    overrides: list[str] = field(default_factory=list)  # training overrides shared by every run (model=..., ...)


@dataclass
class AblationSpec:
    name: str = "ablation"  # the report's title and the prefix of the runs' names
    output: str = MISSING  # directory of the runs, the pipeline outputs and the report
    recipe: RecipeSpec = field(default_factory=RecipeSpec)
    variants: dict[str, VariantSpec] = field(default_factory=dict)
    slurm: bool = False  # submit each run with `launcher.submit` (cluster overrides in `cluster`) instead of locally
    cluster: list[str] = field(default_factory=list)  # launcher.submit's cluster overrides (cluster=local_cpu ...)


@dataclass
class PipelineRun:
    """A variant's data pipeline run: `python -m data_pipeline run <args>`, its shards in <output>/tokens."""

    variant: str
    args: list[str]
    output: Path

    @property
    def shards(self) -> Path:
        return self.output / "tokens"

    def record(self) -> dict[str, Any]:
        return {"variant": self.variant, "args": self.args}


@dataclass
class Run:
    variant: str
    seed: int
    run_dir: Path
    overrides: list[str]  # the complete training command line, run dir included
    max_steps: int
    tokens_per_step: int
    eval_steps: list[int]

    job_name: str  # trainer.name: the Slurm job name under slurm=true

    @property
    def name(self) -> str:
        return self.run_dir.name


@dataclass
class AblationPlan:
    spec: AblationSpec
    output: Path
    pipelines: dict[str, PipelineRun]  # variant -> its pipeline run (variants built from raw input only)
    shards: dict[str, Path]  # variant -> the shards it trains on
    runs: list[Run]


def load_spec(path: str | Path, dotlist: list[str] = ()) -> AblationSpec:
    """The YAML file onto AblationSpec, then `key=value` overrides from the command line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation spec {path}: no such file")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(AblationSpec), OmegaConf.load(path), OmegaConf.from_dotlist(dotlist))
        spec = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"ablation spec {path}: {str(exc).splitlines()[0]}" + (f" (key: {key})" if key else ""))
    spec.output = str(Path(spec.output).resolve())  # relative to the working directory, like every CLI path
    return spec


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _check_source(name: str, variant: VariantSpec) -> None:
    where = f"variants.{name}"
    if variant.shards is not None and (variant.input is not None or variant.pipeline is not None):
        raise ConfigError(f"{where}: give either shards= or input= with pipeline=, not both")
    if variant.shards is not None:
        if variant.pipeline_overrides:
            raise ConfigError(f"{where}.pipeline_overrides: only for a variant built from input= with pipeline=")
        shards = Path(variant.shards)
        if not shards.is_dir() or not any(shards.glob("*.json")):
            raise ConfigError(f"{where}.shards={shards}: no packed shards there (a directory the tokenize step wrote)")
        return
    if variant.input is None or variant.pipeline is None:
        raise ConfigError(
            f"{where}: unknown data source (keys given: {sorted(k for k, v in vars(variant).items() if v)}); "
            "give shards=<token shard dir>, or input=<raw data> with pipeline=<configs/pipeline name>"
        )


def _pipeline_run(name: str, variant: VariantSpec, output: Path) -> PipelineRun:
    """Compose the variant's pipeline config exactly as `python -m data_pipeline run` will, so a wrong override
    fails now, naming the variant."""
    from hydra.errors import HydraException

    from data_pipeline.cli import build_plan, compose_config

    data_dir = output / DATA_DIR / name
    args = [f"pipeline={variant.pipeline}", f"input={Path(variant.input).resolve()}", f"output={data_dir}"]
    args += list(variant.pipeline_overrides)
    try:
        cfg = compose_config(args)
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f": {str(exc.__cause__).splitlines()[0]}" if exc.__cause__ is not None else ""
        raise ConfigError(f"variants.{name}: pipeline config refused: {str(exc).splitlines()[0]}{cause}") from exc
    steps = [s.name for s in cfg.pipeline.steps]
    if not steps or steps[-1] != "tokenize":
        raise ConfigError(
            f"variants.{name}.pipeline={variant.pipeline}: its steps {steps} write no token shards; "
            "use a pipeline that ends with the tokenize step (e.g. default)"
        )
    if not Path(variant.input).exists():
        raise ConfigError(f"variants.{name}.input={variant.input}: no such file or directory")
    try:  # builds every step with its parameters, as the run will: a misspelt step parameter fails here
        build_plan(cfg)
    except (ValueError, TypeError, OmegaConfBaseException) as exc:
        raise ConfigError(f"variants.{name}: pipeline config refused: {str(exc).splitlines()[0]}") from exc
    return PipelineRun(name, args, data_dir)


def _tokens_per_step(cfg: DictConfig) -> int:
    if cfg.trainer.batch_ramp.tokens:
        raise ConfigError("trainer.batch_ramp.tokens: a batch ramp makes tokens per step vary; turn it off (0)")
    if cfg.trainer.global_batch_tokens:
        return int(cfg.trainer.global_batch_tokens)
    return int(cfg.trainer.global_batch_size) * int(cfg.data.seq_len)


def _steps(where: str, tokens: int, per_step: int, key: str) -> int:
    if tokens % per_step:
        raise ConfigError(
            f"{where}: {key}={tokens} is not a whole number of steps of {per_step} tokens "
            "(trainer.global_batch_size x data.seq_len): change the budget or the batch"
        )
    return tokens // per_step


def _training_overrides(spec: AblationSpec, name: str, variant: VariantSpec) -> list[str]:
    for where, overrides in (
        ("recipe.overrides", spec.recipe.overrides),
        (f"variants.{name}.overrides", variant.overrides),
    ):
        for override in overrides:
            if _key(override) in OWNED_KEYS:
                raise ConfigError(
                    f"{where}: {_key(override)} is set by the ablation from its recipe (tokens, eval_every_tokens, "
                    "seeds, tasks); a variant that changed it would train or evaluate on another budget: remove it"
                )
    return list(spec.recipe.overrides) + list(variant.overrides)


def plan(spec: AblationSpec) -> AblationPlan:
    """Every run of the ablation, or ConfigError naming the variant and key; nothing is run or written."""
    from launcher.job_config import cluster_config, compose

    recipe, output = spec.recipe, Path(spec.output)
    if not spec.variants:
        raise ConfigError("variants: none given; name at least two data sources to compare")
    if recipe.tokens <= 0:
        raise ConfigError(f"recipe.tokens={recipe.tokens}: the training budget must be positive")
    if not recipe.seeds or len(set(recipe.seeds)) != len(recipe.seeds):
        raise ConfigError(f"recipe.seeds={recipe.seeds}: give one or more distinct seeds")
    if not recipe.tasks:
        raise ConfigError("recipe.tasks: no evaluation task; name the lm-eval tasks to compare the variants on")
    for task_dir in recipe.task_dirs:
        if not Path(task_dir).is_dir():
            raise ConfigError(f"recipe.task_dirs: {task_dir} is not a directory")
    pipelines, shards, runs = {}, {}, []
    budgets: dict[str, tuple[int, list[int]]] = {}
    for name, variant in spec.variants.items():
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"variants.{name}: use letters, digits, - and _ in a variant name (it names directories)")
        _check_source(name, variant)
        if variant.shards is not None:
            shards[name] = Path(variant.shards).resolve()
        else:
            pipelines[name] = _pipeline_run(name, variant, output)
            shards[name] = pipelines[name].shards
        overrides = _training_overrides(spec, name, variant)
        for seed in recipe.seeds:
            run_dir = output / RUNS_DIR / f"{name}-s{seed}"
            base = [*overrides, f"data.path={shards[name]}", f"trainer.seed={seed}", f"trainer.run_dir={run_dir}"]
            job_name = f"{spec.name}-{name}-s{seed}"
            base += [f"trainer.name={job_name}"]
            try:
                cfg = compose(base + (list(spec.cluster) if spec.slurm else []))
                per_step = _tokens_per_step(cfg)
                if spec.slurm:
                    cluster_config(cfg)  # a bad cluster key fails here, not at the first sbatch
            except ConfigError as exc:
                raise ConfigError(f"variants.{name}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - Hydra's own errors name the key already
                raise ConfigError(f"variants.{name}: training config refused: {str(exc).splitlines()[0]}") from exc
            if cfg.data.name != "packed":
                raise ConfigError(f"variants.{name}: data={cfg.data.name}; an ablation trains on data=packed")
            steps = _steps(f"variants.{name}", recipe.tokens, per_step, "recipe.tokens")
            every = _steps(f"variants.{name}", recipe.eval_every_tokens, per_step, "recipe.eval_every_tokens")
            eval_steps = sorted({*range(every, steps + 1, every), steps} if every else {steps})
            budgets[name] = (steps * per_step, [s * per_step for s in eval_steps])
            tasks = "[" + ",".join(recipe.tasks) + "]"
            dirs = "[" + ",".join(str(Path(d).resolve()) for d in recipe.task_dirs) + "]"
            full = [*base, f"trainer.max_steps={steps}", f"eval.tasks={tasks}", f"eval.task_dirs={dirs}"]
            full += [f"eval.every={every}"]
            runs.append(Run(name, seed, run_dir, full, steps, per_step, eval_steps, job_name))
    first = next(iter(budgets))
    for name, (tokens, points) in budgets.items():
        if (tokens, points) != budgets[first]:
            raise ConfigError(
                f"variants.{name}: trains {tokens} tokens evaluated at {points}, variant {first} "
                f"{budgets[first][0]} at {budgets[first][1]}; its overrides change the tokens per step "
                "(trainer.global_batch_size / trainer.global_batch_tokens / data.seq_len): make them equal"
            )
    return AblationPlan(spec, output, pipelines, shards, runs)
