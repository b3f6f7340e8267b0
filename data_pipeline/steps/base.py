"""What a pipeline step is, so that a step class holds only its algorithm.

A step turns the documents of one shard into the documents it keeps (`run(documents, rank, world_size)`). The
executor owns everything around it: reading and writing shards, quarantine of bad input, the exclusion and
stats files, completion markers and atomic output. A step talks to the executor only through `self.context`
(a `TaskContext`): `exclude(doc, reason, **details)` records a removal, `count`/`score` feed the stats and the
report, and `work_dir` is a scratch directory shared by all tasks and stages of the step.

Global steps (deduplication, mixing, tokenizer training) need to see every shard before deciding. They return
several `Stage`s from `stages()`: per-shard stages run once per shard (they read documents and write
intermediate files into `work_dir`), reduce stages run once after every shard of the previous stage finished.
The executor puts a barrier between stages. The last stage must be per-shard: its output is the step's output.

Used standalone (tests, notebooks), a step gets an in-memory context: `step.context.excluded` lists removals.
"""
from __future__ import annotations

import os
import tempfile
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional

from data_pipeline.document import Document


@dataclass(frozen=True)
class Stage:
    """One phase of a step. Per-shard: `fn(documents, rank, world_size)`; reduce: `fn(world_size)`."""

    name: str
    fn: Callable[..., Any]
    per_shard: bool = True


@dataclass
class TaskContext:
    """The executor's side of one task: where a step records removals, counters and scores."""

    step_name: str = "step"
    rank: int = 0
    world_size: int = 1
    # Standalone default: a fresh path under the temp directory, created only when a stage first writes there.
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / f"loom-step-{uuid.uuid4().hex}")
    output_dir: Optional[Path] = None  # for steps that write their own output format (tokenize -> <output>/tokens)
    seed: int = 0
    excluded: list[tuple[Document, str, dict]] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    scores: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    on_exclude: Optional[Callable[[Document, str, dict], None]] = None

    def exclude(self, doc: Document, reason: str, **details: Any) -> None:
        """Record that `doc` was removed because of `reason` (details: e.g. cluster id, kept neighbour)."""
        self.counters[f"excluded.{reason}"] += 1
        if self.on_exclude is not None:
            self.on_exclude(doc, reason, details)
        else:
            self.excluded.append((doc, reason, details))

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def score(self, name: str, value: float) -> None:
        """Keep a score for the report's histogram of `name`."""
        self.scores[name].append(float(value))

    def work_path(self, name: str) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir / name

    def write_atomic(self, name: str, data: bytes) -> Path:
        """Write an intermediate file into `work_dir` under a temporary name, then rename it into place."""
        final = self.work_path(name)  # creates work_dir
        tmp = final.with_name(f".{final.name}.tmp.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, final)
        return final


class Step:
    """Base class. Subclasses set `name`, take their parameters as keyword arguments and implement `run`."""

    name: ClassVar[str] = "step"
    # False for steps that write their own output into `context.output_dir` (tokenize): the executor then counts
    # the documents `run` yields as kept but writes no document shard for them.
    writes_documents: ClassVar[bool] = True

    def __init__(self) -> None:
        self.context = TaskContext(step_name=self.name)

    def bind(self, context: TaskContext) -> "Step":
        self.context = context
        return self

    def enabled(self) -> bool:
        """False when the configuration makes the step a no-op (e.g. decontaminate without eval sets)."""
        return True

    def stages(self) -> list[Stage]:
        return [Stage("run", self.run)]

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def __call__(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> list[Document]:
        """Run every stage in memory on one shard (rank 0 of 1): handy for tests of a single step."""
        documents = list(documents)
        output: list[Document] = []
        for stage in self.stages():
            if stage.per_shard:
                result = stage.fn(iter(documents), rank, world_size)
                output = list(result) if result is not None else []
            else:
                stage.fn(world_size)
        return output


class FilterStep(Step):
    """A step that keeps or drops each document on its own: implement `filter(doc) -> reason or None`."""

    def filter(self, doc: Document) -> Optional[str]:
        raise NotImplementedError(f"{type(self).__name__} must implement filter()")

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            reason = self.filter(doc)
            if reason is None:
                yield doc
            else:
                self.context.exclude(doc, reason)
