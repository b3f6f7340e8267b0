"""Step registry: the contract between step names (CLI, config, output folders) and their classes.

Modules are imported lazily by name so that a step whose module is missing or broken fails with a clear message
when it is used, not when the package is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

from data_pipeline.steps.base import FilterStep, Stage, Step, TaskContext, reject

# step name -> (module, class)
STEP_CLASSES: dict[str, tuple[str, str]] = {
    "url_filter": ("data_pipeline.steps.filters.url", "UrlFilter"),
    "extract": ("data_pipeline.steps.extract", "Extract"),
    "normalize": ("data_pipeline.steps.normalize", "Normalize"),
    "lang_id": ("data_pipeline.steps.lang_id", "LangId"),
    "exact_dedup": ("data_pipeline.steps.exact_dedup", "ExactDedup"),
    "minhash_dedup": ("data_pipeline.steps.minhash_dedup", "MinHashDedup"),
    "boilerplate_dedup": ("data_pipeline.steps.boilerplate_dedup", "BoilerplateDedup"),
    "heuristics": ("data_pipeline.steps.heuristics", "Heuristics"),
    "gopher_repetition": ("data_pipeline.steps.filters.gopher_repetition", "GopherRepetition"),
    "gopher_quality": ("data_pipeline.steps.filters.gopher_quality", "GopherQuality"),
    "c4": ("data_pipeline.steps.filters.c4", "C4"),
    "fineweb": ("data_pipeline.steps.filters.fineweb", "FineWeb"),
    "pii": ("data_pipeline.steps.pii", "Pii"),
    "classifier": ("data_pipeline.steps.classifier", "Classifier"),
    "decontaminate": ("data_pipeline.steps.decontaminate", "Decontaminate"),
    "mix": ("data_pipeline.steps.mix", "Mix"),
    "tokenize": ("data_pipeline.steps.tokenize", "Tokenize"),
    "chat_tokenize": ("data_pipeline.steps.chat_tokenize", "ChatTokenize"),
}

STEP_NAMES = tuple(STEP_CLASSES)


def get_step_class(name: str) -> type[Step]:
    if name not in STEP_CLASSES:
        raise ValueError(f"unknown step {name!r}; known steps: {', '.join(STEP_NAMES)}")
    module_name, class_name = STEP_CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ValueError(f"step {name!r} is not available: module {module_name} does not exist yet") from exc
        raise
    try:
        return getattr(module, class_name)
    except AttributeError as exc:
        raise ValueError(f"step {name!r}: module {module_name} has no class {class_name}") from exc


def build_step(name: str, params: dict[str, Any] | None = None) -> Step:
    """Instantiate step `name` with keyword parameters; an unknown parameter names the step and the key."""
    cls = get_step_class(name)
    params = dict(params or {})
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"step {name!r}: bad parameters {sorted(params)}: {exc}") from exc


__all__ = ["FilterStep", "Stage", "Step", "TaskContext", "STEP_NAMES", "build_step", "get_step_class", "reject"]
