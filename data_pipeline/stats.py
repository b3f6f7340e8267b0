"""Per-task statistics and their merge into per-step totals.

Each task writes one JSON file; the step's totals are a sum, so stats from tasks that ran on different machines
(Slurm) or in different runs (a rerun after a kill) combine without coordination. Word counts here are
whitespace-separated words (the tokenizer is usually trained later in the pipeline); the tokenize step adds
real token counts as its own counters.

Time comes three ways, never mixed up: `time_s` is the sum of the tasks' own wall times (task-seconds: with
several workers it exceeds the run's wall time), `cpu_s` the sum of their CPU times, and `started`/`finished`
the earliest start and latest end (Unix time), whose difference is the step's wall time.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_SCORES_PER_TASK = 100_000

SUMMED_FIELDS = (
    "docs_in",
    "docs_out",
    "docs_kept",
    "docs_excluded",
    "docs_quarantined",
    "docs_added",
    "bytes_quarantined",
    "words_quarantined",
    "bytes_in",
    "bytes_out",
    "words_in",
    "words_out",
    "time_s",
    "cpu_s",
)


@dataclass
class TaskStats:
    step: str
    rank: int = 0
    docs_in: int = 0  # documents read (including quarantined rows)
    docs_out: int = 0  # documents written (mix may write repeats: docs_out = docs_kept + docs_added)
    docs_kept: int = 0
    docs_excluded: int = 0
    docs_quarantined: int = 0
    docs_added: int = 0
    bytes_quarantined: int = 0  # size of the quarantined rows as read (bytes_in/words_in count documents only)
    words_quarantined: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    words_in: int = 0
    words_out: int = 0
    time_s: float = 0.0  # this task's wall time
    cpu_s: float = 0.0  # this task's CPU time (user + system of its process)
    started: float = 0.0  # Unix time
    finished: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)

    def check_accounting(self) -> None:
        """kept + excluded + quarantined = input; a violation is a bug in a step, so it fails loudly."""
        if self.docs_kept + self.docs_excluded + self.docs_quarantined != self.docs_in:
            raise RuntimeError(
                f"step {self.step} task {self.rank}: accounting broken: kept {self.docs_kept} + excluded "
                f"{self.docs_excluded} + quarantined {self.docs_quarantined} != input {self.docs_in}"
            )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["scores"] = {k: v[:MAX_SCORES_PER_TASK] for k, v in self.scores.items()}
        return data


def merge_task_stats(files: list[Path]) -> dict[str, Any]:
    """Sum the task stats of one step; scores are concatenated in task order."""
    total: dict[str, Any] = {name: 0 for name in SUMMED_FIELDS}
    counters: Counter = Counter()
    scores: dict[str, list[float]] = {}
    step = None
    starts, ends = [], []
    for path in sorted(files):
        data = json.loads(path.read_text())
        step = data["step"]
        for name in SUMMED_FIELDS:
            total[name] += data.get(name, 0)
        if data.get("started"):
            starts.append(data["started"])
            ends.append(data["finished"])
        counters.update(data.get("counters", {}))
        for key, values in data.get("scores", {}).items():
            scores.setdefault(key, []).extend(values)
    total["time_s"] = round(total["time_s"], 3)
    total["cpu_s"] = round(total["cpu_s"], 3)
    total.update(started=min(starts, default=0.0), finished=max(ends, default=0.0))
    total.update(step=step, tasks=len(files), counters=dict(sorted(counters.items())), scores=scores)
    return total


def merge_step_dir(directory: Path) -> dict[str, Any]:
    """Merge a step's stats directory: output-stage task files plus the timings of its earlier stages.

    Earlier stages of global steps (hashing, signatures, tokenizer training) write `stage-<name>-*.json` with
    their wall time; it is added to the step's `time_s` and listed per stage in `stage_time_s`.
    """
    merged = merge_task_stats(sorted(directory.glob("task-*.json")))
    stage_time: dict[str, float] = {}
    stage_cpu = 0.0
    for path in sorted(directory.glob("stage-*.json")):
        data = json.loads(path.read_text())
        stage_time[data["stage"]] = stage_time.get(data["stage"], 0.0) + data["time_s"]
        stage_cpu += data.get("cpu_s", 0.0)
        if data.get("started"):
            merged["started"] = min(merged["started"] or data["started"], data["started"])
            merged["finished"] = max(merged["finished"], data["finished"])
    merged["stage_time_s"] = {k: round(v, 3) for k, v in stage_time.items()}
    merged["time_s"] = round(merged["time_s"] + sum(stage_time.values()), 3)
    merged["cpu_s"] = round(merged["cpu_s"] + stage_cpu, 3)
    merged["wall_s"] = round(merged["finished"] - merged["started"], 3) if merged["started"] else None
    return merged
