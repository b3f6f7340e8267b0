"""Resume inside a task: a streaming group's task commits how far it got, so a task killed after hours on a large
shard resumes from its last committed input row instead of from the start (datatrove and NeMo Curator resume
only whole tasks).

Every `checkpoint_rows` input rows, at a point where every step of the group has finished each document it
received (a step that reads ahead, or a group whose steps cannot restart mid-stream, never checkpoints), the task
flushes its output files to disk and writes `<output>/.progress/<head step>/task-RRRRR.json` atomically: the input
rows fully processed, each output file's size, and every step's stats, counters and scores so far. The output
files are written under stable names while the task runs (`.<name>.partial`, renamed into place at the end as
before), so a restarted task truncates each to its committed size, appends from there, skips the rows the
checkpoint covers and continues with the steps' counts restored: the finished files equal an uninterrupted
run's, byte for byte, and each byte is still written once (tests/data_pipeline/test_resume_inside_task.py).

A step restarts mid-stream when `Step.resumes_midway` says so: per-document steps (every `FilterStep`), and the
dedup steps' output stages, which number their input documents from `TaskContext.position`. Tokenize (a shard
built whole) and mix (repeats drawn across the shard) restart their task from its start; so does Parquet
output, which is written whole at the end.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from data_pipeline.shards import AtomicRecordWriter, write_json_atomic
from data_pipeline.stats import MAX_SCORES_PER_TASK

PROGRESS_DIR = ".progress"
log = logging.getLogger(__name__)


class ResumableRecordWriter(AtomicRecordWriter):
    """A JSONL record writer whose unfinished file has a stable name (`.<name>.partial`) that a restarted task
    can truncate to a committed size and append to; `commit()` renames it into place as the atomic writer does.
    A compressed file (`jsonl.zst`) ends a zstd frame at every checkpoint, so the committed size is a frame boundary
    and the appended frames decode after it."""

    def __init__(self, final: Path, fmt: str, resume_at: Optional[int] = None) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.tmp = partial_path(self.final)
        self.count = 0
        self._rows: list[dict] = []
        if resume_at is None:
            self._open("wb")
        else:
            with open(self.tmp, "r+b") as handle:  # drop whatever was written after the checkpoint
                handle.truncate(resume_at)
            self._open("ab")

    def committed_size(self) -> int:
        """Flush to disk and return the file's size: what a checkpoint records."""
        return self.flush_to_disk()


def partial_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial")


class TaskProgress:
    """The checkpoint file of one streaming group's task: load, save, remove."""

    def __init__(self, root: Path, group_names: list[str], rank: int, every_rows: int) -> None:
        self.root = root
        self.group_names = group_names
        self.rank = rank
        self.every_rows = every_rows
        self.path = root / PROGRESS_DIR / group_names[0] / f"task-{rank:05d}.json"
        self.last_rows = 0

    def load(self) -> Optional[dict[str, Any]]:
        """The last checkpoint, or None to start from the beginning (none, another group, or an output file that
        is not there any more: a task killed while renaming its files into place)."""
        if not self.path.is_file():
            return None
        try:
            checkpoint = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s): task %d starts over", self.path, exc, self.rank)
            return None
        if checkpoint.get("group") != self.group_names:
            return None
        for name, size in checkpoint["sizes"].items():
            partial = partial_path(self.root / name)
            if not partial.is_file() or partial.stat().st_size < size:
                log.warning("%s: %s missing or shorter than recorded: task %d restarts", self.path, partial, self.rank)
                return None
        self.last_rows = checkpoint["input_rows"]
        return checkpoint

    def due(self, rows_read: int) -> bool:
        return self.every_rows > 0 and rows_read - self.last_rows >= self.every_rows

    def save(self, rows_read: int, writers: dict[str, ResumableRecordWriter], stats: dict[str, dict]) -> None:
        sizes = {name: writer.committed_size() for name, writer in writers.items()}
        write_json_atomic(
            self.path,
            {"group": self.group_names, "input_rows": rows_read, "sizes": sizes, "stats": stats, "saved": time.time()},
        )
        self.last_rows = rows_read

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def stats_snapshot(stats, counters: Counter, scores: dict[str, list[float]]) -> dict[str, Any]:
    """A step's TaskStats as a checkpoint keeps it: its counters and scores so far (scores cut as a task's stats
    file cuts them, which keeps the same first values once the rest is appended)."""
    data = stats.to_json()
    data["counters"] = dict(counters)
    data["scores"] = {k: v[:MAX_SCORES_PER_TASK] for k, v in scores.items()}
    return data


def restored_counts(snapshot: dict[str, Any]) -> tuple[Counter, dict[str, list[float]]]:
    return Counter(snapshot["counters"]), defaultdict(list, {k: list(v) for k, v in snapshot["scores"].items()})
