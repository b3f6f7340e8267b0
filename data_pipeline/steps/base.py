"""What a pipeline step is, so that a step class holds only its algorithm.

A step turns the documents of one shard into the documents it keeps (`run(documents, rank, world_size)`). The
executor owns everything around it: reading and writing shards, quarantine of bad input, the exclusion and
stats files, completion markers and atomic output. A step talks to the executor only through `self.context`
(a `TaskContext`): `exclude(doc, rule, value, threshold, **details)` records a removal with the rule that
removed it, the value it measured and the threshold that value crossed; `count`/`score` feed the stats and the
report, and `work_dir` is a scratch directory shared by all tasks and stages of the step.

Rule names are `<step>:<rule>` everywhere (`extract:empty`, `lang_id:other_language`, `exact_dedup:duplicate`;
`Step.rule` builds one), so the exclusion records, counters and the report group by step then rule. The heuristics
step's rules are named by the rule family that is a step of its own (`c4:min_sentences`).

Every per-document step (`FilterStep`) is a filter, an annotator or both over one method: `filter(doc)` returns
True to keep the document, or `reject(rule, value, threshold, **details)` to drop it, and may add metadata
(`annotate`) or rewrite the text of the copy it is handed. The base class owns the loop over the documents, the
counting and the exclusion record, so a new filter is one method; `setup()` runs once per task before the first
document (loading an index, writing a record).

Global steps (deduplication, mixing, tokenizer training) need to see every shard before deciding. They return
several `Stage`s from `stages()`: per-shard stages run once per shard (they read documents and write
intermediate files into `work_dir`), reduce stages run once after every shard of the previous stage finished.
The executor puts a barrier between stages. The last stage must be per-shard: its output is the step's output.

Used standalone (tests, notebooks), a step gets an in-memory context: `step.context.excluded` lists removals.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Union

from data_pipeline.document import Document, text_size

# Score names under which the measured values of excluded documents are kept, one list per rule: the report draws
# a histogram of each, with its threshold.
EXCLUDED_VALUE_PREFIX = "excluded_value/"


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
    # The pipeline's output directory, for a step that reads what an earlier step of the run recorded (tokenize
    # reads decontaminate's record, data_pipeline/decontamination.py); None standalone.
    run_root: Optional[Path] = None
    # How many of this task's input documents the output stage handled before this run of it: 0, or where a task
    # resumed from a checkpoint (steps that number their documents count from here)
    position: int = 0
    # The documents of input shard `rank` as this step's per-shard stages read them, for a reduce stage that reads
    # back what they chose (tokenize's sample: row numbers, not copies of the texts); None standalone.
    input_documents: Optional[Callable[[int], Iterator[Document]]] = None
    excluded: list[tuple[Document, str, dict]] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    scores: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    on_exclude: Optional[Callable[[Document, str, dict], None]] = None

    def exclude(self, doc: Document, rule: str, value: Any, threshold: Any, **details: Any) -> None:
        """Record that `rule` removed `doc`: the value it measured, the threshold it crossed, and any details
        (e.g. the kept neighbour). The exclusion record carries them as `excluded_reason` (the rule),
        `excluded_value`, `excluded_threshold` and `excluded_<detail>`. `rule` is `<step>:<rule>`."""
        if ":" not in rule:
            raise ValueError(f"step {self.step_name}: exclusion rule {rule!r} is not of the form '<step>:<rule>'")
        self.counters[f"excluded.{rule}"] += 1
        self.counters[f"excluded_words.{rule}"] += text_size(doc.text)[1]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.scores[EXCLUDED_VALUE_PREFIX + rule].append(float(value))
        details = {"value": value, "threshold": threshold, **details}
        if self.on_exclude is not None:
            self.on_exclude(doc, rule, details)
        else:
            self.excluded.append((doc, rule, details))

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def score(self, name: str, value: float) -> None:
        """Keep a score for the report's histogram of `name`."""
        self.scores[name].append(float(value))

    def work_path(self, name: str) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir / name

    def write_atomic(self, name: str, data: bytes) -> Path:
        """Write an intermediate file into `work_dir` under a temporary name, then rename it into place. The
        temporary name carries the task's rank, so a retry of a killed task sweeps what it left even when `name`
        has no rank in it (decontaminate's record.json; shards.remove_stale_temporaries)."""
        final = self.work_path(name)  # creates work_dir
        tmp = final.with_name(f".{final.name}.{self.rank:05d}.tmp.{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, final)
        return final


class Step:
    """Base class. Subclasses set `name`, take their parameters as keyword arguments and implement `run`."""

    name: ClassVar[str] = "step"
    # False for steps that write their own output into `context.output_dir` (tokenize): the executor then counts
    # the documents `run` yields as kept but writes no document shard for them.
    writes_documents: ClassVar[bool] = True
    # True for a step whose output stage only drops documents, yielding the others unchanged (exact and MinHash
    # dedup): the executor may then skip writing what it keeps and re-apply its removals where the next step
    # reads (data_pipeline/executors/streams.py).
    drops_only: ClassVar[bool] = False
    # True for a step whose output stage can restart at any document of its input (nothing carried from one
    # document to the next but the position, `TaskContext.position`): a killed task then resumes from its last
    # checkpoint (data_pipeline/executors/task_progress.py) instead of from its start.
    resumes_midway: ClassVar[bool] = False

    def __init__(self) -> None:
        self.context = TaskContext(step_name=self.name)

    def bind(self, context: TaskContext) -> "Step":
        self.context = context
        return self

    def rule(self, reason: str) -> str:
        """The name of this step's rule `reason` in exclusion records, counters and the report."""
        return f"{self.name}:{reason}"

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


Verdict = Union[bool, tuple]


def reject(rule: str, value: Any, threshold: Any, **details: Any) -> tuple[bool, str, dict[str, Any]]:
    """The verdict of a filter that drops a document: `(False, rule, {"value", "threshold", ...details})`, `rule`
    without the step's name (the base class prefixes it)."""
    return False, rule, {"value": value, "threshold": threshold, **details}


def annotate(doc: Document, **fields: Any) -> None:
    """Add metadata to the document a filter was handed (a new dict: the caller's document keeps its own)."""
    doc.metadata = {**doc.metadata, **fields}


class FilterStep(Step):
    """A per-document step: a filter, an annotator or both. Implement `filter(doc) -> Verdict`.

    `filter` returns True (keep) or `(False, rule, {"value": ..., "threshold": ..., **details})` (drop; build it
    with `reject`), as datatrove's filters do, except that a drop must name its rule, the value measured and the
    threshold: a bare False, or a drop without a rule, is refused. The rule recorded is `<step name>:<rule>`
    (`rule()`). `filter` is handed a copy of the document: it may rewrite its text (C4 drops lines) or add metadata
    (`annotate`: language ID's label, the classifier's score) for the document kept or for the exclusion record.
    """

    resumes_midway = True  # filter(doc) sees one document at a time

    def setup(self) -> None:
        """Runs once per task before the first document: load an index, write a record the step keeps."""

    def filter(self, doc: Document) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__} must implement filter()")

    def exclusion(self, verdict: Verdict) -> Optional[tuple[str, Any, Any, dict[str, Any]]]:
        """None to keep; else (rule, value, threshold, other details) for `TaskContext.exclude`."""
        if verdict is True:
            return None
        if isinstance(verdict, tuple) and len(verdict) == 3 and isinstance(verdict[0], bool) and verdict[1]:
            if verdict[0]:
                return None
            details = dict(verdict[2])
            if "value" in details and "threshold" in details:
                return self.rule(verdict[1]), details.pop("value"), details.pop("threshold"), details
        raise TypeError(
            f"{type(self).__name__}.filter returned {verdict!r}: expected True or "
            "reject(rule, value, threshold, **details)"
        )

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        self.setup()
        filter_document, exclude = self.filter, self.context.exclude
        for doc in documents:
            doc = Document(doc.id, doc.text, doc.metadata)
            verdict = filter_document(doc)
            if verdict is True:
                yield doc
                continue
            excluded = self.exclusion(verdict)
            if excluded is None:
                yield doc
            else:
                rule, value, threshold, details = excluded
                exclude(doc, rule, value, threshold, **details)
