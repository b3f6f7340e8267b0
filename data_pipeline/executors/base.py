"""The plan of a pipeline run and the code that runs one task of it, shared by every executor.

A run is steps x stages x shards. A task is (step, stage, rank) for a per-shard stage, or (step, stage) for a
reduce stage. Executors (local process pool, Slurm arrays) differ only in where tasks run and how they wait
for a stage to finish; what a task reads and writes is decided here, so a task gives the same files wherever it
runs.

Layout under the output directory:
  <step>/shard-RRRRR.<fmt>              kept documents
  excluded/<step>/shard-RRRRR.jsonl     removed documents with their reason (and details, e.g. cluster id)
  quarantine/<step>/shard-RRRRR.jsonl   rows that were not valid documents, with the reason
  stats/<step>/task-RRRRR.json          per-task stats of the output stage; stage-<stage>-RRRRR.json: the
                                        wall time of earlier stages (stats/<step>.json: merged)
  tokens/                               packed shards (tokenize)
  .work/<step>/                         intermediate files of global steps
  .markers/<step>/<stage>/task-RRRRR    completion markers: a rerun skips tasks that have one
  plan.json                             the plan, with a fingerprint of every input file
Every file is written under a temporary name and renamed; the marker comes last, so a killed task leaves no
output a rerun would trust, and a task removes the temporary files a killed run of it left. A rerun resumes only
the same plan on the same input: another configuration or a changed input file is refused (save_plan_checked).
A task that fails raises TaskFailed naming the step, stage, task and the last document it read.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from data_pipeline.document import Document
from data_pipeline.fingerprint import START_OVER, InputChanged, describe_changes, fingerprint_files
from data_pipeline.quarantine import check_fraction, enforce
from data_pipeline.readers import InputSpec, Quarantined, input_files, read_input_shard
from data_pipeline.shards import (
    OUTPUT_FORMATS,
    AtomicRecordWriter,
    find_shard,
    read_shard,
    remove_stale_temporaries,
    shard_name,
    write_json_atomic,
)
from data_pipeline.stats import TaskStats, merge_step_dir
from data_pipeline.steps import Step, TaskContext, build_step

TOKENS_DIR = "tokens"
MAX_CHANGES_SHOWN = 10
log = logging.getLogger(__name__)


class TaskFailed(RuntimeError):
    """A task raised: the message names the step, stage, task and the last document read (picklable, so it
    crosses the process pool unchanged)."""


@dataclass
class StepSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelinePlan:
    """Everything a task needs, JSON-serialisable so Slurm tasks can load it from disk."""

    input: InputSpec
    output: str
    steps: list[StepSpec]
    tasks: int = 4
    output_format: str = "jsonl"
    seed: int = 0
    # name -> {size, mtime_ns, sha256} of every input file, filled by save_plan_checked (data_pipeline/fingerprint.py)
    input_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Fail the run when more than this fraction of the rows read is quarantined (None: never; see quarantine.py)
    max_quarantine_fraction: Optional[float] = None

    def __post_init__(self) -> None:
        self.max_quarantine_fraction = check_fraction(self.max_quarantine_fraction)
        if self.tasks < 1:
            raise ValueError(f"tasks={self.tasks}: must be at least 1")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format={self.output_format!r}: use one of {list(OUTPUT_FORMATS)}")
        for i, spec in enumerate(self.steps):
            step = build_step(spec.name, spec.params)  # fails early on an unknown step or parameter
            stages = step.stages()
            if not stages or not stages[-1].per_shard:
                raise ValueError(f"step {spec.name}: its last stage must be per-shard (it produces the output)")
            if not step.writes_documents and i != len(self.steps) - 1:
                raise ValueError(f"step {spec.name} writes no documents, so it must be the last step")
        if len({s.name for s in self.steps}) != len(self.steps):
            raise ValueError(f"a step appears twice in {[s.name for s in self.steps]}: output folders would collide")

    @property
    def root(self) -> Path:
        return Path(self.output)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PipelinePlan":
        return cls(
            input=InputSpec(**data["input"]),
            output=data["output"],
            steps=[StepSpec(**s) for s in data["steps"]],
            tasks=data["tasks"],
            output_format=data["output_format"],
            seed=data["seed"],
            input_files=data.get("input_files", {}),
            max_quarantine_fraction=data.get("max_quarantine_fraction"),
        )

    def save(self, path: Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "PipelinePlan":
        return cls.from_json(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ paths
    def marker(self, step: str, stage: str, rank: int) -> Path:
        return self.root / ".markers" / step / stage / f"task-{rank:05d}"

    def stats_file(self, step: str, rank: int) -> Path:
        return self.root / "stats" / step / f"task-{rank:05d}.json"

    def build(self, index: int) -> Step:
        spec = self.steps[index]
        return build_step(spec.name, spec.params)


def save_plan_checked(plan: PipelinePlan) -> None:
    """Save the plan in the output directory with a fingerprint of every input file, refusing to resume a run that
    was started with another plan or on other input (its completion markers would make the new run silently skip
    work, or mix documents of the old and the new files)."""
    path = plan.root / "plan.json"
    files = input_files(plan.input)
    if path.exists():
        previous = json.loads(path.read_text())
        recorded = previous.pop("input_files", None)
        previous.setdefault("max_quarantine_fraction", None)  # plans saved before the key existed
        previous.get("input", {}).setdefault("format", "text")  # plans saved before chat input existed
        if previous != json.loads(json.dumps({k: v for k, v in plan.to_json().items() if k != "input_files"})):
            raise ValueError(
                f"output={plan.root} holds a run with a different configuration ({path}); "
                "use a new output directory, or delete this one to start over"
            )
        if recorded is not None:
            changes = describe_changes(recorded, files)
            if changes:
                shown = "; ".join(changes[:MAX_CHANGES_SHOWN]) + (
                    f"; and {len(changes) - MAX_CHANGES_SHOWN} more" if len(changes) > MAX_CHANGES_SHOWN else ""
                )
                raise InputChanged(
                    f"output={plan.root} holds a run started on other input (input={plan.input.path}; fingerprints in "
                    f"{path}): {shown}. Resuming would mix documents of both; {START_OVER}"
                )
            plan.input_files = recorded
            plan.save(path)
            return
        log.warning(
            "%s predates input fingerprints: a change made before this resume cannot be detected; "
            "recording the input as it is now",
            path,
        )
    if not files:
        log.warning(
            "input=%s is a hub dataset: it has no files to fingerprint, so a resume cannot detect a change",
            plan.input.path,
        )
    start = time.perf_counter()
    plan.input_files = fingerprint_files(files)
    log.info("fingerprinted %d input files in %.1f s", len(files), time.perf_counter() - start)
    plan.save(path)


def _context(plan: PipelinePlan, step: Step, rank: int) -> TaskContext:
    return TaskContext(
        step_name=step.name,
        rank=rank,
        world_size=plan.tasks,
        work_dir=plan.root / ".work" / step.name,
        output_dir=plan.root / TOKENS_DIR,
        seed=plan.seed,
        run_root=plan.root,
    )


class _Reading:
    """The rows of a task's input, remembering the last one read so that an error can say where it happened."""

    def __init__(self, rows: Iterator[Document | Quarantined]) -> None:
        self.rows = rows
        self.last: Optional[str] = None

    def __iter__(self) -> Iterator[Document | Quarantined]:
        for row in self.rows:
            self.last = f"document {row.id!r}" if isinstance(row, Document) else f"{row.source} line {row.line}"
            yield row


def _input_rows(plan: PipelinePlan, step_index: int, rank: int) -> Iterator[Document | Quarantined]:
    if step_index == 0:
        return read_input_shard(plan.input, rank, plan.tasks, fingerprints=plan.input_files)
    previous = plan.steps[step_index - 1].name
    path = find_shard(plan.root / previous, rank)
    if path is None:
        raise FileNotFoundError(f"{plan.root / previous}: shard {rank} missing; step {previous} did not finish")
    return read_shard(path)


def task_done(plan: PipelinePlan, step_index: int, stage_index: int, rank: int) -> bool:
    step = plan.steps[step_index].name
    stage = plan.build(step_index).stages()[stage_index].name
    return plan.marker(step, stage, rank).exists()


def _task_directories(plan: PipelinePlan, step: str) -> list[Path]:
    root = plan.root
    return [
        root / step,
        root / "excluded" / step,
        root / "quarantine" / step,
        root / "stats" / step,
        root / ".work" / step,
        root / TOKENS_DIR,
    ]


def run_task(plan: PipelinePlan, step_index: int, stage_index: int, rank: int = 0) -> bool:
    """Run one task unless its marker exists; return True if it ran. Reduce stages use rank 0."""
    step = plan.build(step_index)
    stages = step.stages()
    stage = stages[stage_index]
    marker = plan.marker(step.name, stage.name, rank)
    if marker.exists():
        return False
    if step_index == 1 and stage_index == 0 and plan.max_quarantine_fraction is not None:
        check_quarantine(plan)  # under Slurm, the first task after the reading step is where the run can stop
    for directory in _task_directories(plan, step.name):  # what a killed earlier run of this task left
        remove_stale_temporaries(directory, rank)
    context = _context(plan, step, rank)
    step.bind(context)
    start, started, cpu_start = time.perf_counter(), time.time(), time.process_time()
    reading = _Reading(iter(()))
    try:
        if stage_index == len(stages) - 1:
            reading = _Reading(_input_rows(plan, step_index, rank))
            _run_output_stage(plan, step, stage.fn, rank, context, reading)
        elif not stage.per_shard:
            stage.fn(plan.tasks)
        else:
            reading = _Reading(_input_rows(plan, step_index, rank))
            result = stage.fn((row for row in reading if isinstance(row, Document)), rank, plan.tasks)
            if result is not None:
                for _ in result:  # drain a generator-style stage
                    pass
    except InputChanged:
        raise
    except Exception as exc:
        where = f", after reading {reading.last}" if reading.last else ""
        raise TaskFailed(
            f"step {step.name}, stage {stage.name}, task {rank} of {plan.tasks}{where}: {type(exc).__name__}: {exc}"
        ) from exc
    if stage_index != len(stages) - 1:
        timing = {
            "stage": stage.name,
            "rank": rank,
            "time_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start,
            "started": started,
            "finished": time.time(),
        }
        write_json_atomic(plan.root / "stats" / step.name / f"stage-{stage.name}-{rank:05d}.json", timing)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"finished": time.time()}))
    return True


def _run_output_stage(plan: PipelinePlan, step: Step, fn, rank: int, context: TaskContext, rows: _Reading) -> None:
    root = plan.root
    stats = TaskStats(step=step.name, rank=rank, started=time.time())
    start, cpu_start = time.perf_counter(), time.process_time()
    kept_writer = (
        AtomicRecordWriter(root / step.name / shard_name(rank, plan.output_format), plan.output_format)
        if step.writes_documents
        else None
    )
    excluded_writer = AtomicRecordWriter(root / "excluded" / step.name / shard_name(rank, "jsonl"))
    quarantine_writer = AtomicRecordWriter(root / "quarantine" / step.name / shard_name(rank, "jsonl"))
    writers = [w for w in (kept_writer, excluded_writer, quarantine_writer) if w is not None]

    def on_exclude(doc: Document, reason: str, details: dict) -> None:
        stats.docs_excluded += 1
        excluded_writer.write(
            {**doc.to_record(), "excluded_reason": reason, **{f"excluded_{k}": v for k, v in details.items()}}
        )

    context.on_exclude = on_exclude

    def counted_documents() -> Iterator[Document]:
        for row in rows:
            stats.docs_in += 1
            if isinstance(row, Quarantined):
                stats.docs_quarantined += 1
                stats.bytes_quarantined += row.raw_bytes or 0
                stats.words_quarantined += row.raw_words or 0
                reason = row.reason.split(":")[0]
                context.count(f"quarantined.{reason}")
                context.count(f"quarantined_source.{reason}|{row.source}")
                quarantine_writer.write(row.to_record())
                continue
            stats.bytes_in += len(row.text.encode("utf-8"))
            stats.words_in += len(row.text.split())
            yield row

    try:
        for doc in fn(counted_documents(), rank, plan.tasks):
            stats.docs_out += 1
            stats.bytes_out += len(doc.text.encode("utf-8"))
            stats.words_out += len(doc.text.split())
            if kept_writer is not None:
                kept_writer.write(doc.to_record())
        stats.docs_added = context.counters.get("added_copies", 0)
        stats.docs_kept = stats.docs_out - stats.docs_added
        stats.time_s = time.perf_counter() - start
        stats.cpu_s, stats.finished = time.process_time() - cpu_start, time.time()
        stats.counters = dict(context.counters)
        stats.scores = {k: list(v) for k, v in context.scores.items()}
        stats.check_accounting()
        for writer in writers:
            writer.commit()
    except BaseException:
        for writer in writers:  # a committed writer has nothing left to discard
            writer.discard()
        raise
    write_json_atomic(plan.stats_file(step.name, rank), stats.to_json())


def check_quarantine(plan: PipelinePlan) -> dict[str, Any]:
    """The first step's merged stats; raises QuarantineExceeded when it quarantined more than the plan allows."""
    first = merge_step_dir(plan.root / "stats" / plan.steps[0].name)
    first["step"] = plan.steps[0].name
    enforce(first, plan.max_quarantine_fraction, plan.root)
    return first


def merge_step_stats(plan: PipelinePlan, step_name: str) -> dict[str, Any]:
    merged = merge_step_dir(plan.root / "stats" / step_name)
    merged["step"] = step_name
    write_json_atomic(plan.root / "stats" / f"{step_name}.json", merged)
    return merged


def stage_names(plan: PipelinePlan, step_index: int) -> list[tuple[str, bool]]:
    return [(s.name, s.per_shard) for s in plan.build(step_index).stages()]
