"""Reading lm-evaluation-harness task YAML from local directories, as its `--include_path` does.

A task file may `include:` others (paths relative to the including file; the including file's keys win) and may
name Python callables with `!function module.attr` (module looked up as `<yaml dir>/module.py`, the way lm-eval
resolves it). Task directories are scanned for `**/*.yaml` in sorted order; a config with `group:` is a group, one
with `task:` a task, and every `tag:` a task names becomes a tag listing it. Later directories override earlier.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evaluation.errors import TaskInputError

_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class FunctionRef:
    """An unresolved `!function module.attr` (the index reads YAML without importing anything)."""

    qualified_name: str
    base_dir: Path

    def resolve(self):
        module_name, _, attr = self.qualified_name.rpartition(".")
        if not module_name:
            raise TaskInputError(
                f"!function {self.qualified_name!r} (YAML in {self.base_dir}) needs the form module.function"
            )
        module_path = (self.base_dir / f"{module_name.replace('.', '/')}.py").resolve()
        if not module_path.is_file():
            raise TaskInputError(
                f"!function {self.qualified_name!r}: {module_path} does not exist; put {module_name}.py beside the YAML"
            )
        key = f"loom_eval_tasks.{module_path.with_suffix('').as_posix().strip('/').replace('/', '.')}"
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, module_path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[key] = module
        if not hasattr(module, attr):
            raise TaskInputError(f"!function {self.qualified_name!r}: {module_path} defines no {attr!r}")
        return getattr(module, attr)


def _loader_for(base_dir: Path) -> type:
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # a fresh class per directory so the constructor knows where modules live
        pass

    def function_tag(loader, node):
        return FunctionRef(loader.construct_scalar(node), base_dir)

    Loader.add_constructor("!function", function_tag)
    return Loader


def load_task_yaml(path: str | Path, _seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """One YAML file with its `include:` chain merged in (included keys first, local keys win)."""
    path = Path(path).expanduser().resolve()
    if path in _seen:
        raise TaskInputError(f"{path}: include cycle ({' -> '.join(str(p) for p in _seen)})")
    if not path.is_file():
        raise TaskInputError(f"{path}: task YAML file does not exist")
    try:
        with path.open("rb") as handle:
            cfg = yaml.load(handle, Loader=_loader_for(path.parent))
    except yaml.YAMLError as err:
        raise TaskInputError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict):
        raise TaskInputError(f"{path}: a task YAML must hold a mapping, found {type(cfg).__name__}")
    if "include" not in cfg:
        return cfg
    includes = cfg.pop("include")
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if not inc_path.is_file():
            raise TaskInputError(f"{path}: include: {inc!r} -> {inc_path} does not exist")
        included = load_task_yaml(inc_path, _seen | {path})
        included.pop("task_list", None)
        merged.update(included)
    merged.update(cfg)
    return merged


@dataclass
class IndexEntry:
    """One name a task directory defines: a task, a group or a tag."""

    name: str
    kind: str  # "task" | "group" | "tag"
    yaml_path: Path | None
    cfg: dict[str, Any] | None = None
    members: list[str] = field(default_factory=list)  # a tag's tasks


@dataclass
class TaskIndex:
    """Every task, group and tag in the task directories, and the files that could not be read."""

    entries: dict[str, IndexEntry]
    unreadable: dict[Path, str]

    @classmethod
    def build(cls, task_dirs: list[str | Path]) -> TaskIndex:
        entries: dict[str, IndexEntry] = {}
        unreadable: dict[Path, str] = {}
        for root in task_dirs:
            root = Path(root).expanduser()
            if not root.is_dir():
                raise TaskInputError(f"eval.task_dirs: {root} is not a directory")
            found: dict[str, IndexEntry] = {}
            yaml_files = sorted(
                (p for p in root.glob("**/*.yaml") if not _IGNORED_DIRS.intersection(p.parts)), key=Path.as_posix
            )
            for yaml_path in yaml_files:
                try:
                    cfg = load_task_yaml(yaml_path)
                except TaskInputError as err:
                    unreadable[yaml_path] = str(err)
                    continue
                _register(cfg, yaml_path, found, unreadable)
            entries.update(found)
        return cls(entries, unreadable)


def _register(cfg: dict, path: Path, found: dict[str, IndexEntry], unreadable: dict[Path, str]) -> None:
    if "class" in cfg:
        unreadable[path] = "Python task classes (`class:`) are not supported; write the task as YAML"
    elif "group" in cfg:
        found.setdefault(str(cfg["group"]), IndexEntry(str(cfg["group"]), "group", path, cfg))
    elif "task" in cfg and isinstance(cfg["task"], str):
        name = cfg["task"]
        if name in found:
            return
        found[name] = IndexEntry(name, "task", path, cfg)
        tags = cfg.get("tag") or []
        for tag in [tags] if isinstance(tags, str) else tags:
            entry = found.setdefault(tag, IndexEntry(tag, "tag", None))
            if entry.kind == "tag":
                entry.members.append(name)
    else:
        unreadable[path] = "neither a `task:` name nor a `group:`"
