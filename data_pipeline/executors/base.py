"""The plan of a pipeline run and the code that runs one task of it, shared by every executor.

A run is steps x stages x shards. A task is (step, stage, rank) for a per-shard stage, or (step, stage) for a
reduce stage. Executors (local process pool, Slurm arrays) differ only in where tasks run and how they wait
for a stage to finish; what a task reads and writes is decided here, so a task gives the same files wherever it
runs.

Layout under the output directory:
  <step>/shard-RRRRR.<fmt>              kept documents: of the last step, or of every step with keep_intermediate
  <step>/shard-RRRRR.jsonl.zst          kept documents of a step a later step reads from disk (streams.py)
  excluded/<step>/shard-RRRRR.jsonl.zst removed documents with their reason (and details, e.g. cluster id)
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

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from data_pipeline.document import Document, text_size
from data_pipeline.executors.streams import (
    StepShape,
    group_of,
    input_rows,
    kept_documents_format,
    writes_kept_documents,
)
from data_pipeline.executors.task_progress import ResumableRecordWriter, TaskProgress, restored_counts, stats_snapshot
from data_pipeline.fingerprint import START_OVER, InputChanged, describe_changes, fingerprint_files
from data_pipeline.quarantine import check_fraction, enforce
from data_pipeline.readers import InputSpec, Quarantined, input_files
from data_pipeline.shards import (
    COMPRESSED_JSONL,
    OUTPUT_FORMATS,
    AtomicRecordWriter,
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
    # Write every step's kept documents (a copy of the corpus per step, for inspection); off: streams.py's rules
    keep_intermediate: bool = False
    # A streaming group's task commits its progress every this many input rows and resumes there (0: never;
    # task_progress.py)
    checkpoint_rows: int = 10_000

    def __post_init__(self) -> None:
        self.max_quarantine_fraction = check_fraction(self.max_quarantine_fraction)
        if self.tasks < 1:
            raise ValueError(f"tasks={self.tasks}: must be at least 1")
        if self.checkpoint_rows < 0:
            raise ValueError(f"checkpoint_rows={self.checkpoint_rows}: must be >= 0 (0: no checkpoints in a task)")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format={self.output_format!r}: use one of {list(OUTPUT_FORMATS)}")
        # What streams.py's rules read of each step, from the steps built here once to check them
        self.shapes: list[StepShape] = []
        for i, spec in enumerate(self.steps):
            step = build_step(spec.name, spec.params)  # fails early on an unknown step or parameter
            stages = step.stages()
            self.shapes.append(StepShape.of(step))
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
            keep_intermediate=data.get("keep_intermediate", False),
            checkpoint_rows=data.get("checkpoint_rows", PipelinePlan.checkpoint_rows),
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
        previous.setdefault("keep_intermediate", True)  # before it, every step wrote its documents
        previous.setdefault("checkpoint_rows", PipelinePlan.checkpoint_rows)
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


def _context(plan: PipelinePlan, step: Step, step_index: int, rank: int) -> TaskContext:
    return TaskContext(
        step_name=step.name,
        rank=rank,
        world_size=plan.tasks,
        work_dir=plan.root / ".work" / step.name,
        output_dir=plan.root / TOKENS_DIR,
        seed=plan.seed,
        run_root=plan.root,
        input_documents=lambda shard: (row for row in input_rows(plan, step_index, shard) if isinstance(row, Document)),
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
    """Run one task unless its marker exists; return True if it ran. Reduce stages use rank 0. The output stage of
    a step runs its whole streaming group (streams.py): a later step of the group is done by its head's task."""
    step = plan.build(step_index)
    stages = step.stages()
    stage = stages[stage_index]
    marker = plan.marker(step.name, stage.name, rank)
    if marker.exists():
        return False
    output_stage = stage_index == len(stages) - 1
    group = group_of(plan, step_index) if output_stage else [step_index]
    if group[0] != step_index:  # the head's task writes this step's marker: run the group from its head
        head_stages = plan.build(group[0]).stages()
        return run_task(plan, group[0], len(head_stages) - 1, rank)
    if step_index == _first_after_reading(plan) and stage_index == 0 and plan.max_quarantine_fraction is not None:
        check_quarantine(plan)  # under Slurm, the first task after the reading step is where the run can stop
    for index in group:
        for directory in _task_directories(plan, plan.steps[index].name):  # what a killed earlier run left
            remove_stale_temporaries(directory, rank)
    context = _context(plan, step, step_index, rank)
    step.bind(context)
    start, started, cpu_start = time.perf_counter(), time.time(), time.process_time()
    reading = _Reading(iter(()))
    group_steps = [step] + [plan.build(i) for i in group[1:]]
    names = "+".join(s.name for s in group_steps)
    try:
        if output_stage:
            reading = _Reading(input_rows(plan, step_index, rank))
            _run_output_group(plan, group, group_steps, rank, reading)
        elif not stage.per_shard:
            stage.fn(plan.tasks)
        else:
            reading = _Reading(input_rows(plan, step_index, rank))
            result = stage.fn((row for row in reading if isinstance(row, Document)), rank, plan.tasks)
            if result is not None:
                for _ in result:  # drain a generator-style stage
                    pass
    except InputChanged:
        raise
    except Exception as exc:
        where = f", after reading {reading.last}" if reading.last else ""
        raise TaskFailed(
            f"step {names}, stage {stage.name}, task {rank} of {plan.tasks}{where}: {type(exc).__name__}: {exc}"
        ) from exc
    if not output_stage:
        timing = {
            "stage": stage.name,
            "rank": rank,
            "time_s": time.perf_counter() - start,
            "cpu_s": time.process_time() - cpu_start,
            "started": started,
            "finished": time.time(),
        }
        write_json_atomic(plan.root / "stats" / step.name / f"stage-{stage.name}-{rank:05d}.json", timing)
    for member in reversed(group_steps):  # the head's marker last: it says the whole group is done
        done = plan.marker(member.name, stage.name if member is step else member.stages()[-1].name, rank)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"finished": time.time()}))
    return True


def _first_after_reading(plan: PipelinePlan) -> int:
    """The first step after the group that reads the input: where the run checks the quarantined share."""
    return len(group_of(plan, 0))


class _StepOutput:
    """One step of a streaming group: its stats, its writers and the generators that count what passes through."""

    def __init__(self, plan: PipelinePlan, step: Step, index: int, rank: int, open_writer) -> None:
        root = plan.root
        self.step = step
        self.stats = TaskStats(step=step.name, rank=rank, started=time.time())
        fmt = kept_documents_format(plan, index)
        self.kept_writer = (
            open_writer(root / step.name / shard_name(rank, fmt), fmt) if writes_kept_documents(plan, index) else None
        )
        excluded = root / "excluded" / step.name / shard_name(rank, COMPRESSED_JSONL)
        self.excluded_writer = open_writer(excluded, COMPRESSED_JSONL)
        self.quarantine_writer = open_writer(root / "quarantine" / step.name / shard_name(rank, "jsonl"), "jsonl")
        self.row_done: Optional[Callable[[], None]] = None  # the group's checkpoint hook, on its first step
        self.writers = [w for w in (self.kept_writer, self.excluded_writer, self.quarantine_writer) if w is not None]
        self.wall = self.cpu = 0.0  # time spent in this step's generator, its upstream included
        step.context.on_exclude = self.on_exclude

    def on_exclude(self, doc: Document, reason: str, details: dict) -> None:
        self.stats.docs_excluded += 1
        self.excluded_writer.write(
            {**doc.to_record(), "excluded_reason": reason, **{f"excluded_{k}": v for k, v in details.items()}}
        )

    def counted_input(self, rows: Iterator[Document | Quarantined]) -> Iterator[Document]:
        stats, context = self.stats, self.step.context
        for row in rows:
            stats.docs_in += 1
            if isinstance(row, Quarantined):
                stats.docs_quarantined += 1
                stats.bytes_quarantined += row.raw_bytes or 0
                stats.words_quarantined += row.raw_words or 0
                reason = row.reason.split(":")[0]
                context.count(f"quarantined.{reason}")
                context.count(f"quarantined_source.{reason}|{row.source}")
                self.quarantine_writer.write(row.to_record())
            else:
                size_bytes, size_words = text_size(row.text)
                stats.bytes_in += size_bytes
                stats.words_in += size_words
                yield row
            if self.row_done is not None:  # the group finished with this row: a point a checkpoint may record
                self.row_done()

    def balanced(self) -> bool:
        """Every document this step received has been kept, excluded or quarantined (none held in a batch)."""
        stats = self.stats
        return stats.docs_in == stats.docs_out - stats.docs_added + stats.docs_excluded + stats.docs_quarantined

    def restore(self, snapshot: dict[str, Any]) -> None:
        """The counts of a checkpoint, for a task resuming from it."""
        self.stats = TaskStats(**snapshot)
        context = self.step.context
        context.counters, context.scores = restored_counts(snapshot)
        context.position = self.stats.docs_in - self.stats.docs_quarantined

    def snapshot(self) -> dict[str, Any]:
        return stats_snapshot(self.stats, self.step.context.counters, self.step.context.scores)

    def counted_output(self, documents: Iterator[Document]) -> Iterator[Document]:
        stats, writer = self.stats, self.kept_writer
        documents = iter(documents)
        while True:
            wall, cpu = time.perf_counter(), time.process_time()
            doc = next(documents, None)
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
            if doc is None:
                return
            stats.docs_out += 1
            size_bytes, size_words = text_size(doc.text)
            stats.bytes_out += size_bytes
            stats.words_out += size_words
            if writer is not None:
                writer.write(doc.to_record())
            yield doc

    def finish(self, upstream_wall: float, upstream_cpu: float) -> None:
        stats, context = self.stats, self.step.context
        stats.docs_added = context.counters.get("added_copies", 0)
        stats.docs_kept = stats.docs_out - stats.docs_added
        stats.time_s, stats.cpu_s = self.wall - upstream_wall, self.cpu - upstream_cpu
        stats.finished = time.time()
        stats.counters = dict(context.counters)
        stats.scores = {k: list(v) for k, v in context.scores.items()}
        stats.check_accounting()


def _run_output_group(plan: PipelinePlan, group: list[int], steps: list[Step], rank: int, rows: _Reading) -> None:
    """The output stages of a streaming group, chained: each step's `run` reads what the one before it yields.
    Every step's writers commit only after the last document went through, then its stats are written. Where
    every step can restart mid-stream, the task checkpoints and resumes (task_progress.py)."""
    root = plan.root
    names = [step.name for step in steps]
    resumable = plan.checkpoint_rows > 0 and plan.output_format == "jsonl" and all(s.resumes_midway for s in steps)
    progress = TaskProgress(root, names, rank, plan.checkpoint_rows) if resumable else None
    checkpoint = progress.load() if progress is not None else None
    sizes = checkpoint["sizes"] if checkpoint else {}

    def open_writer(final: Path, fmt: str) -> AtomicRecordWriter:
        if progress is None:
            return AtomicRecordWriter(final, fmt)
        return ResumableRecordWriter(final, fmt, sizes.get(str(final.relative_to(root))) if checkpoint else None)

    outputs: list[_StepOutput] = []
    for index, step in zip(group, steps):
        if index != group[0]:
            step.bind(_context(plan, step, index, rank))
        outputs.append(_StepOutput(plan, step, index, rank, open_writer))
    writers = [w for output in outputs for w in output.writers]
    skipped = 0
    if checkpoint is not None:
        for output in outputs:
            output.restore(checkpoint["stats"][output.step.name])
        skipped = checkpoint["input_rows"]
        log.info(
            "step %s task %d: resuming from input row %d (checkpoint of %s)",
            "+".join(names),
            rank,
            skipped,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(checkpoint["saved"])),
        )
    if progress is not None:
        rows_done = [skipped]
        by_name = {str(w.final.relative_to(root)): w for w in writers}

        def row_done() -> None:
            rows_done[0] += 1
            if progress.due(rows_done[0]) and all(output.balanced() for output in outputs):
                progress.save(rows_done[0], by_name, {o.step.name: o.snapshot() for o in outputs})

        outputs[0].row_done = row_done
    stream: Iterator = itertools.islice(rows, skipped, None)
    for output in outputs:
        fn = output.step.stages()[-1].fn
        stream = output.counted_output(fn(output.counted_input(stream), rank, plan.tasks))
    try:
        for _ in stream:
            pass
        upstream = (0.0, 0.0)
        for output in outputs:
            output.finish(*upstream)
            upstream = (output.wall, output.cpu)
        for writer in writers:
            writer.commit()
    except BaseException:
        for writer in writers:  # a committed writer has nothing left to discard
            writer.discard()
        raise
    for output in outputs:
        write_json_atomic(plan.stats_file(output.step.name, rank), output.stats.to_json())
    if progress is not None:
        progress.remove()


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
