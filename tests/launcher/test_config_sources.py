"""One source per config key, one list per choice, one dtype table.

- Every YAML file under configs/ holds only what choosing it changes: a value equal to the dataclass default of
  its key (the schema is the one source of defaults) fails, naming the file and the key.
- A choice list (a literal tuple/list/set of two or more names) is written once in the code: the same set of
  names written in two places fails, naming both.
- Dtype names live in one table (model/dtypes.py): a literal collection naming two or more dtypes anywhere else
  fails.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
PACKAGES = ("model", "parallel", "launcher", "data_pipeline")
DTYPE_NAMES = {"fp32", "bf16", "fp16", "float32", "bfloat16", "float16"}


def _schemas() -> dict[str, type]:
    """configs/<path> (a file, or a group directory) -> the dataclass that types it."""
    from launcher.config import (
        DataConfig,
        EstimateConfig,
        LoggingConfig,
        OptimConfig,
        ScheduleConfig,
        TrainConfig,
        TrainerConfig,
    )
    from model.config import ModelConfig
    from parallel.config import ParallelConfig

    schemas = {
        "train.yaml": TrainConfig,
        "lora_finetune.yaml": TrainConfig,
        "model": ModelConfig,
        "data": DataConfig,
        "optim": OptimConfig,
        "schedule": ScheduleConfig,
        "parallel": ParallelConfig,
        "trainer": TrainerConfig,
        "logging": LoggingConfig,
        "estimate.yaml": EstimateConfig,
    }
    from cluster.config import ClusterConfig
    from data_pipeline.cli import PipelineRunConfig, PipelineStepsConfig

    schemas.update({"cluster": ClusterConfig, "pipeline.yaml": PipelineRunConfig, "pipeline": PipelineStepsConfig})
    return schemas


def _yaml_files() -> list[tuple[Path, type]]:
    files = []
    for key, schema in _schemas().items():
        path = CONFIGS / key
        files.extend((f, schema) for f in sorted(path.glob("*.yaml"))) if path.is_dir() else files.append(
            (path, schema)
        )
    return files


def _dataclass_of(annotation) -> type | None:
    """The dataclass inside Optional[X] / X, if any."""
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def repeated_defaults(data: dict, schema: type, prefix: str = "") -> list[str]:
    """Keys of `data` whose value equals `schema`'s default (recursing into nested dataclass sections)."""
    hints = typing.get_type_hints(schema)
    defaults = schema()
    found = []
    for key, value in data.items():
        if key in ("defaults", "hydra") or key not in hints:
            continue
        default = getattr(defaults, key)
        nested = _dataclass_of(hints[key])
        if isinstance(value, dict) and nested is not None:
            found += repeated_defaults(value, nested, f"{prefix}{key}.")
        elif not dataclasses.is_dataclass(default) and value == default:
            found.append(f"{prefix}{key}: {value!r}")
    return found


@pytest.mark.parametrize(
    "path, schema", _yaml_files(), ids=lambda v: str(v.relative_to(CONFIGS)) if isinstance(v, Path) else ""
)
def test_yaml_holds_only_what_the_choice_changes(path, schema):
    data = yaml.safe_load(path.read_text()) or {}
    repeats = repeated_defaults(data, schema)
    assert not repeats, f"{path.relative_to(REPO)} repeats {schema.__name__} defaults: {repeats}"


def _literal_collections(tree: ast.AST):
    """(node, names) for every literal tuple/list/set of >= 2 string constants, and every dict whose keys are."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            elements = node.elts
        elif isinstance(node, ast.Dict):
            elements = [k for k in node.keys if k is not None]
        else:
            continue
        names = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if len(names) >= 2 and len(names) == len(elements):
            yield node, names


def _sources():
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def test_each_choice_list_is_written_once():
    seen: dict[frozenset, str] = {}
    duplicates = []
    for path, tree in _sources():
        for node, names in _literal_collections(tree):
            key = frozenset(names)
            if len(key) < 2 or isinstance(node, ast.Dict):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if key in seen and not seen[key].startswith(f"{path.relative_to(REPO)}:"):
                duplicates.append(f"{sorted(key)} at {seen[key]} and {where}")
            seen.setdefault(key, where)
    assert not duplicates, "choice lists written twice:\n" + "\n".join(duplicates)


def test_dtype_names_have_one_table():
    tables = []
    for path, tree in _sources():
        if path == REPO / "model" / "dtypes.py":
            continue
        for node, names in _literal_collections(tree):
            if len(DTYPE_NAMES & set(names)) >= 2:
                tables.append(f"{path.relative_to(REPO)}:{node.lineno}: {names}")
    assert not tables, "dtype tables outside model/dtypes.py:\n" + "\n".join(tables)
