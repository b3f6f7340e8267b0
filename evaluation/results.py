"""Aggregated results in lm-evaluation-harness's layout, a Markdown table, and per-document samples.

`results.<task>["<metric>,<filter>"]` with `"<metric>_stderr,<filter>"`, `alias`, `name`, `sample_len`; groups
with aggregate_metric_list get lm-eval's size-weighted mean and pooled standard error (also under `groups`);
`n-samples`, `configs`, `versions`, `n-shot`, `higher_is_better`, `group_subtasks` as lm-eval writes them. Loom adds
`decontamination` (per task: whether the run's training data was decontaminated against it, evaluation/
contamination.py), a key lm-eval's readers ignore, a column of the Markdown table, `<task>/decontaminated` (1/0)
among the flat metrics and `<task>/decontamination` (the status) in status_metrics.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics as M
from evaluation.filters import DEFAULT_FILTER
from evaluation.tasks import Group, Task


@dataclass
class TaskOutcome:
    """One task's per-document metric values (document order) under (metric, filter) and its sample records."""

    task: Task
    raw_metrics: dict[tuple[str, str], list] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)


@dataclass
class EvalResults:
    results: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    group_subtasks: dict[str, list[str]]
    configs: dict[str, dict]
    versions: dict[str, Any]
    n_shot: dict[str, int]
    higher_is_better: dict[str, dict[str, bool | None]]
    n_samples: dict[str, dict[str, int]]
    samples: dict[str, list[dict]]
    # task name -> {"status": decontaminated | unchecked | other_version, "fingerprint", ...}; empty: not asked
    decontamination: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_lm_eval_json(self) -> dict[str, Any]:
        out = {
            "results": _plain(self.results),
            **({"groups": _plain(self.groups)} if self.groups else {}),
            "group_subtasks": self.group_subtasks,
            "configs": _plain(self.configs),
            "versions": self.versions,
            "n-shot": self.n_shot,
            "higher_is_better": self.higher_is_better,
            "n-samples": self.n_samples,
        }
        if self.decontamination:
            out["decontamination"] = _plain(self.decontamination)
        return out

    def write_json(self, path: str | Path, with_samples: bool = False) -> None:
        """The results file (and, if asked, the samples under "samples"), written atomically."""
        data = self.to_lm_eval_json()
        if with_samples:
            data["samples"] = _plain(self.samples)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, ensure_ascii=False, default=str)
        os.replace(tmp, path)

    def metric_rows(self) -> list[tuple[str, str, Any, Any, int]]:
        """(task or group, metric, value, stderr, number of documents) for every reported metric."""
        rows = []
        for name, entry in self.results.items():
            for key, value in entry.items():
                if "," not in key or "_stderr," in key:
                    continue
                metric, filt = key.split(",", 1)
                label = metric if filt == DEFAULT_FILTER else key
                stderr = entry.get(f"{metric}_stderr,{filt}", M.NOT_AVAILABLE)
                rows.append((name, label, value, stderr, int(entry.get("sample_len", 0))))
        return rows

    def to_markdown(self) -> str:
        """One row per task and metric; with a decontamination record asked for, a column saying, per task, whether
        the training data was decontaminated against it (groups: empty)."""
        marked = bool(self.decontamination)
        lines = ["| Task | Metric | Value | Stderr | N docs |" + (" Decontamination |" if marked else "")]
        lines.append("|---|---|---:|---:|---:|" + ("---|" if marked else ""))
        for name, metric, value, stderr, n in self.metric_rows():
            alias = self.results[name].get("alias", name)
            row = f"| {alias} | {metric} | {_fmt(value)} | {_fmt(stderr)} | {n} |"
            if marked:
                row += f" {self.decontamination.get(name, {}).get('status', '')} |"
            lines.append(row)
        return "\n".join(lines) + "\n"

    def flat_metrics(self) -> dict[str, float]:
        """{"<task>/<metric>": value} for metrics.jsonl and wandb (numbers only)."""
        out = {}
        for name, metric, value, stderr, _ in self.metric_rows():
            if isinstance(value, (int, float, np.floating, np.integer)):
                out[f"{name}/{metric}"] = float(value)
            if isinstance(stderr, (int, float, np.floating, np.integer)):
                out[f"{name}/{metric}_stderr"] = float(stderr)
        for name, entry in self.decontamination.items():
            out[f"{name}/decontaminated"] = float(entry["status"] == "decontaminated")
        return out

    def status_metrics(self) -> dict[str, str]:
        """{"<task>/decontamination": status} for the sinks that take text (metrics.jsonl, wandb)."""
        return {f"{name}/decontamination": entry["status"] for name, entry in self.decontamination.items()}


def _fmt(value) -> str:
    if isinstance(value, (int, float, np.floating, np.integer)):
        return "nan" if math.isnan(float(value)) else f"{float(value):.4f}"
    return str(value)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_results(items: list[Task | Group], outcomes: list[TaskOutcome], bootstrap_iters: int) -> EvalResults:
    results: dict[str, dict[str, Any]] = {}
    configs, versions, n_shot, higher, n_samples, samples = {}, {}, {}, {}, {}, {}
    for outcome in outcomes:
        task = outcome.task
        entry, sample_len = _aggregate_task(task, outcome.raw_metrics, bootstrap_iters)
        results[task.name] = {"name": task.name, "alias": task.alias, "sample_len": sample_len, **entry}
        configs[task.name] = task.dump_config()
        versions[task.name] = task.version
        n_shot[task.name] = task.num_fewshot
        higher[task.name] = {m.name: m.higher_is_better for m in task.metrics}
        n_samples[task.name] = {"original": len(task.docs), "effective": sample_len}
        samples[task.name] = outcome.samples
    groups_out: dict[str, dict[str, Any]] = {}
    subtasks: dict[str, list[str]] = {}
    for group in _groups_bottom_up(items):
        results[group.name] = _aggregate_group(group, results)
        versions[group.name] = group.version
        subtasks[group.name] = [c.name for c in group.children]
        if group.aggregate_metrics:
            groups_out[group.name] = dict(results[group.name])
        _propagate(group, higher, n_shot)
    return EvalResults(
        results,
        groups_out,
        subtasks,
        dict(sorted(configs.items())),
        dict(sorted(versions.items())),
        dict(sorted(n_shot.items())),
        dict(sorted(higher.items())),
        n_samples,
        samples,
    )


def _aggregate_task(task: Task, raw: dict[tuple[str, str], list], bootstrap_iters: int) -> tuple[dict[str, Any], int]:
    aggregations = {m.name: m.aggregation for m in task.metrics}
    entry: dict[str, Any] = {}
    sample_len = 0
    for (metric, filt), items in raw.items():
        aggregation = aggregations.get(metric, M.mean)
        entry[f"{metric},{filt}"] = aggregation(items)
        sample_len = max(sample_len, len(items))
        entry[f"{metric}_stderr,{filt}"] = M.stderr(metric, aggregation, items, bootstrap_iters)
    return entry, sample_len


def _groups_bottom_up(items: list[Task | Group]) -> list[Group]:
    ordered: list[Group] = []
    seen: set[str] = set()

    def visit(group: Group) -> None:
        if group.name in seen:
            return
        for child in group.children:
            if isinstance(child, Group):
                visit(child)
        seen.add(group.name)
        ordered.append(group)

    for item in items:
        if isinstance(item, Group):
            visit(item)
    return ordered


def _aggregate_group(group: Group, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"alias": group.alias, "name": group.name}
    if not group.aggregate_metrics:
        return entry
    leaves = [t.name for t in group.leaf_tasks()]
    entry["sample_len"] = sum(results[n].get("sample_len", 0) for n in leaves if n in results)
    counts: dict[str, int] = {}
    for spec in group.aggregate_metrics:
        filters = spec.filter_list or sorted(
            {
                key.split(",", 1)[1]
                for n in leaves
                for key in results.get(n, {})
                if key.startswith(f"{spec.metric},") and "_stderr" not in key
            }
        )
        for filt in filters:
            key, stderr_key = f"{spec.metric},{filt}", f"{spec.metric}_stderr,{filt}"
            values, stderrs, sizes = [], [], []
            for name in leaves:
                if key in results.get(name, {}):
                    values.append(results[name][key])
                    sizes.append(results[name].get("sample_len", 0))
                    if results[name].get(stderr_key) is not None:
                        stderrs.append(results[name][stderr_key])
            if not values:
                continue
            entry[key] = M.aggregate_subtask_metrics(values, sizes, spec.weight_by_size)
            counts[key] = sum(sizes)
            if len(stderrs) == len(values) and M.NOT_AVAILABLE not in stderrs:
                entry[stderr_key] = (
                    M.pooled_sample_stderr(stderrs, sizes) if spec.weight_by_size else M.unweighted_mean_stderr(stderrs)
                )
            else:
                entry[stderr_key] = M.NOT_AVAILABLE
    if counts:
        entry["sample_count"] = counts
    return entry


def _propagate(group: Group, higher: dict, n_shot: dict) -> None:
    children = [c.name for c in group.children]
    shots = {n_shot[c] for c in children if c in n_shot}
    if len(shots) == 1:
        n_shot[group.name] = shots.pop()
    merged: dict[str, bool | None] = {}
    for child in children:
        for metric, value in higher.get(child, {}).items():
            if metric not in merged:
                merged[metric] = value
            elif merged[metric] is not None and merged[metric] != value:
                merged[metric] = None
    if merged:
        higher[group.name] = merged
