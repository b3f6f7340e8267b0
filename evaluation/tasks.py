"""Tasks, groups and tags by name from directories of lm-evaluation-harness YAML, as its `--include_path` finds them.

`load_tasks(names, task_dirs)` resolves each name to a task, a group (its members built with the group's overrides;
inline members named `<group>::<name>`) or a tag (its tasks), and builds each `Task`, which checks its data and
templates at once, so a bad input is refused before a model sees a request.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.errors import TaskInputError
from evaluation.task import DEFAULT_FEWSHOT_SEED, OUTPUT_TYPES, Task
from evaluation.task_files import IndexEntry, TaskIndex, load_task_yaml

__all__ = ["DEFAULT_FEWSHOT_SEED", "OUTPUT_TYPES", "AggregateMetric", "Group", "Task", "load_tasks"]


@dataclass
class AggregateMetric:
    metric: str
    filter_list: list[str] | None = None
    weight_by_size: bool = True


@dataclass
class Group:
    """Tasks (and groups) reported together; with aggregate_metric_list, a score over their documents."""

    name: str
    alias: str
    children: list[Task | Group]
    aggregate_metrics: list[AggregateMetric]
    version: str = "N/A"
    config: dict[str, Any] = field(default_factory=dict)

    def leaf_tasks(self) -> list[Task]:
        out: list[Task] = []
        for child in self.children:
            out.extend(child.leaf_tasks() if isinstance(child, Group) else [child])
        return out


def load_tasks(names: list[str], task_dirs: list[str | Path]) -> list[Task | Group]:
    """The named tasks, groups and tags from the task directories, each checked whole (see module docstring)."""
    index = TaskIndex.build(task_dirs)
    out: list[Task | Group] = []
    for name in names:
        if name not in index.entries:
            raise TaskInputError(_unknown_name_message(name, index, task_dirs))
        built = _build(index.entries[name], index, overrides=None, group_name=None)
        out.extend(built if isinstance(built, list) else [built])
    return out


def _unknown_name_message(name: str, index: TaskIndex, task_dirs) -> str:
    close = difflib.get_close_matches(name, list(index.entries), n=3)
    msg = (
        f"eval.tasks: unknown task {name!r}: no task, group or tag of that name in eval.task_dirs "
        f"{list(map(str, task_dirs))}"
    )
    if close:
        msg += f"; did you mean {close}?"
    if index.unreadable:
        msg += "; unreadable YAML: " + "; ".join(f"{p}: {why}" for p, why in index.unreadable.items())
    return msg


def _build(entry: IndexEntry, index: TaskIndex, overrides: dict | None, group_name: str | None):
    if entry.kind == "tag":
        return [_build(index.entries[t], index, overrides, group_name) for t in sorted(entry.members)]
    cfg = load_task_yaml(entry.yaml_path) if entry.yaml_path else dict(entry.cfg or {})
    cfg = {**cfg, **(overrides or {})}
    if entry.kind == "group":
        return _build_group(str(cfg["group"]), cfg, index, entry.yaml_path)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    return Task(cfg, entry.yaml_path)


_GROUP_KEYS = {"group", "group_alias", "task", "aggregate_metric_list", "metadata", "tag"}


def _build_group(name: str, cfg: dict, index: TaskIndex, yaml_path: Path | None) -> Group:
    where = str(yaml_path) if yaml_path else f"group {name!r}"
    task_overrides = {k: v for k, v in cfg.items() if k not in _GROUP_KEYS}
    members = cfg.get("task") or []
    members = [members] if isinstance(members, str) else members
    children: list[Task | Group] = []
    for item in members:
        if isinstance(item, str):
            base, item_overrides = item, dict(task_overrides)
        elif isinstance(item, dict) and "group" in item:
            sub = item["group"]
            if sub in index.entries:
                children.append(
                    _build(
                        index.entries[sub],
                        index,
                        {**task_overrides, **{k: v for k, v in item.items() if k != "group"}},
                        name,
                    )
                )
            else:
                children.append(_build_group(f"{name}::{sub}", item, index, yaml_path))
            continue
        elif isinstance(item, dict) and "task" in item:
            base, item_overrides = item["task"], {**task_overrides, **item}
        else:
            raise TaskInputError(f"{where}: group member {item!r} must be a name or a mapping with task:/group:")
        if base not in index.entries:
            if isinstance(item, dict):  # an inline task defined inside the group
                children.append(Task({**item_overrides, "task": f"{name}::{base}"}, yaml_path))
                continue
            raise TaskInputError(
                f"{where}: group {name!r} lists " + _unknown_name_message(base, index, []).removeprefix("eval.tasks: ")
            )
        built = _build(index.entries[base], index, item_overrides or None, name)
        children.extend(built if isinstance(built, list) else [built])
    aggregates = []
    raw = cfg.get("aggregate_metric_list")
    for item in [raw] if isinstance(raw, dict) else (raw or []):
        aggregation = item.get("aggregation", "mean")
        if aggregation != "mean":
            raise TaskInputError(f"{where}: aggregate_metric_list: only `aggregation: mean` is defined by lm-eval")
        filters = item.get("filter_list")
        aggregates.append(
            AggregateMetric(
                item["metric"],
                [filters] if isinstance(filters, str) else filters,
                bool(item.get("weight_by_size", True)),
            )
        )
    metadata = cfg.get("metadata") or {}
    return Group(
        name,
        cfg.get("group_alias") or name,
        children,
        aggregates,
        str(metadata.get("version", "N/A")) if metadata else "N/A",
        dict(cfg),
    )
