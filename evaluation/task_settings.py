"""The parts of an lm-eval task config that are settings, read and checked once: which keys exist, the metric list,
greedy generation settings and few-shot settings, each refused with the YAML file and key named when unusable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from evaluation import metrics as M
from evaluation.errors import TaskInputError
from evaluation.fewshot import SAMPLERS
from evaluation.task_files import FunctionRef

TASK_KEYS = {
    "task",
    "task_alias",
    "tag",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "process_docs",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "process_results",
    "description",
    "target_delimiter",
    "fewshot_delimiter",
    "fewshot_config",
    "num_fewshot",
    "metric_list",
    "output_type",
    "generation_kwargs",
    "repeats",
    "filter_list",
    "should_decontaminate",
    "doc_to_decontamination_query",
    "gen_prefix",
    "metadata",
    "unsafe_code",
}
REFUSED_KEYS = {
    "use_prompt": "promptsource prompts need the network",
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "custom_dataset": "a Python dataset builder is not supported; use dataset_path: json",
    "class": "Python task classes are not supported; write the task as YAML",
}
_FEWSHOT_KEYS = {
    "sampler",
    "split",
    "process_docs",
    "samples",
    "doc_to_text",
    "doc_to_choice",
    "doc_to_target",
    "gen_prefix",
    "fewshot_delimiter",
    "target_delimiter",
    "fewshot_indices",
}
_GREEDY_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature"}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default


def resolve_functions(value):
    """`!function` references become the callables they name (lists and mappings resolved member by member)."""
    if isinstance(value, FunctionRef):
        return value.resolve()
    if isinstance(value, list):
        return [resolve_functions(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve_functions(v) for k, v in value.items()}
    return value


def check_keys(cfg: dict, where: str) -> None:
    """Every key is one lm-eval's TaskConfig knows and this evaluator can honour."""
    if "task" not in cfg:
        raise TaskInputError(f"{where}: a task config needs `task: <name>`")
    for key, why in REFUSED_KEYS.items():
        if cfg.get(key) is not None:
            raise TaskInputError(f"{where}: {key}: {why}")
    unknown = sorted(set(cfg) - TASK_KEYS - set(REFUSED_KEYS) - {"group"})
    if unknown:
        raise TaskInputError(f"{where}: unknown task keys {unknown} (lm-eval's TaskConfig has no such field)")
    if int(cfg.get("repeats", 1)) != 1:
        raise TaskInputError(f"{where}: repeats: {cfg['repeats']} - only greedy single answers (repeats: 1)")


def generation_settings(cfg: dict, where: str) -> dict[str, Any]:
    """until (a list) and max_gen_toks, with lm-eval's defaults (stop at the few-shot delimiter, 256 tokens)."""
    gen = cfg.get("generation_kwargs")
    delim = cfg.get("fewshot_delimiter", "\n\n")
    if gen is None:
        gen = {"until": [delim], "do_sample": False, "temperature": 0.0, "max_gen_toks": DEFAULT_MAX_GEN_TOKS}
    gen = dict(gen)
    extra = sorted(set(gen) - _GREEDY_GEN_KEYS)
    if extra or gen.get("do_sample") or float(gen.get("temperature", 0.0) or 0.0) > 0:
        raise TaskInputError(
            f"{where}: generation_kwargs {sorted(gen)}: only greedy generation (until, max_gen_toks, "
            "do_sample: false, temperature: 0) is supported"
        )
    until = gen.get("until", [delim])
    gen["until"] = [until] if isinstance(until, str) else list(until)
    gen.setdefault("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    return gen


@dataclass
class MetricSpec:
    """One entry of a task's metric_list: how a document's value is made and how values are aggregated."""

    name: str
    aggregation: Callable
    higher_is_better: bool | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    function: Callable | None = None  # a `!function` metric (generate_until only, as in lm-eval)


def metric_specs(cfg: dict, output_type: str, has_process_results: bool, where: str) -> list[MetricSpec]:
    """The metric_list (or lm-eval's defaults for the output type), each with its aggregation and direction."""
    entries = cfg.get("metric_list")
    if entries is None:
        entries = [{"metric": name} for name in M.DEFAULT_METRICS[output_type]]
    specs = []
    for entry in entries:
        if not isinstance(entry, dict) or "metric" not in entry:
            raise TaskInputError(f"{where}: metric_list entry {entry!r} needs a `metric:` key")
        name, function = entry["metric"], None
        if callable(name):
            function, name = name, name.__name__
            if output_type != "generate_until" and not has_process_results:
                raise TaskInputError(f"{where}: metric {name}: a `!function` metric needs generate_until")
        kwargs = {
            k: v for k, v in entry.items() if k not in ("metric", "aggregation", "higher_is_better", "hf_evaluate")
        }
        info = M.BUILTIN_METRICS.get(name)
        if info is None and function is None and not has_process_results:
            raise TaskInputError(
                f"{where}: metric_list names {name!r}, which is not built in "
                f"({sorted(M.BUILTIN_METRICS)}); name one of those or give process_results: !function ..."
            )
        if info is not None and function is None and not has_process_results and output_type not in info.output_types:
            raise TaskInputError(
                f"{where}: metric {name!r} is not produced by output_type {output_type} "
                f"(it is for {list(info.output_types)})"
            )
        aggregation = entry.get("aggregation", info.aggregation if info else None)
        if isinstance(aggregation, str):
            if aggregation not in M.AGGREGATIONS:
                raise TaskInputError(
                    f"{where}: metric {name}: unknown aggregation {aggregation!r} (known: {sorted(M.AGGREGATIONS)})"
                )
            aggregation = M.AGGREGATIONS[aggregation]
        if not callable(aggregation):
            raise TaskInputError(f"{where}: metric {name}: give `aggregation:` (a name or !function)")
        higher = entry.get("higher_is_better", info.higher_is_better if info else None)
        specs.append(MetricSpec(name, aggregation, higher, kwargs, function))
    return specs


@dataclass
class FewshotSettings:
    """fewshot_config with the task's own fields as defaults (lm-eval's FewshotConfig.from_dict)."""

    sampler: str
    split: str | None
    samples: list | Callable | None
    process_docs: Callable | None
    doc_to_text: Any
    doc_to_choice: Any
    doc_to_target: Any
    gen_prefix: Any
    fewshot_delimiter: str
    target_delimiter: str


def fewshot_settings(cfg: dict, where: str) -> FewshotSettings:
    fs = dict(cfg.get("fewshot_config") or {})
    unknown = sorted(set(fs) - _FEWSHOT_KEYS)
    if unknown:
        raise TaskInputError(f"{where}: fewshot_config: unknown keys {unknown}")
    if fs.get("fewshot_indices") is not None:
        raise TaskInputError(f"{where}: fewshot_config.fewshot_indices is ignored by lm-eval 0.4.13; drop it")
    sampler = fs.get("sampler", "default")
    if sampler not in SAMPLERS:
        raise TaskInputError(f"{where}: fewshot_config.sampler {sampler!r} is not one of {sorted(SAMPLERS)}")
    return FewshotSettings(
        sampler=sampler,
        split=fs.get("split", cfg.get("fewshot_split")),
        samples=fs.get("samples"),
        process_docs=fs.get("process_docs", cfg.get("process_docs")),
        doc_to_text=fs.get("doc_to_text", cfg.get("doc_to_text")),
        doc_to_choice=fs.get("doc_to_choice", cfg.get("doc_to_choice")),
        doc_to_target=fs.get("doc_to_target", cfg.get("doc_to_target")),
        gen_prefix=fs.get("gen_prefix", cfg.get("gen_prefix")),
        fewshot_delimiter=fs.get("fewshot_delimiter", cfg.get("fewshot_delimiter", "\n\n")),
        target_delimiter=fs.get("target_delimiter", cfg.get("target_delimiter", " ")),
    )
