"""Which steps of a plan stream into one another inside a task, and where each step's input documents come from.

A copy of the corpus after every step is the dominant cost of a web-scale run in disk, I/O and money; datatrove
streams documents through its filters in memory and writes only the result. Two rules do that here, and
`keep_intermediate=true` switches both off (every step writes its documents, as before):

1. Streaming groups. The output stage of any step, followed by the per-document steps after it (steps with a
   single stage: normalize, the filters, language ID, PII, decontamination...), runs as one task: documents flow
   from one step's `run` into the next in memory. Each step of the group still writes its own exclusion records,
   quarantine, stats and completion marker; only the group's last step writes documents. A step with several
   stages (dedup, mix, tokenize) starts a new group: its barrier stages must read their input from disk.
2. Removal sets applied on read. A dedup step that only drops documents (`Step.drops_only`: exact and MinHash
   dedup), alone in its group, writes no copy of what it keeps: the step after it reads the dedup step's own input
   and applies the dedup step's removal set first. That re-application is silent: the exclusion records and stats
   of the removal were written once, by the dedup step's own task.

The documents a streamed run still writes only for a later phase (what a dedup barrier reads) are zstd-compressed
JSONL (`shard-RRRRR.jsonl.zst`); the final documents are written in the run's output format.

The documents kept, the tokens, the exclusion records and the stats are the same as with a copy per step
(tests/data_pipeline/test_streaming.py compares both byte for byte). A group's task writes every marker of the
group, the head's last, so a rerun either finds the whole group done or runs it again from its input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from data_pipeline.document import Document
from data_pipeline.readers import Quarantined, read_input_shard
from data_pipeline.shards import COMPRESSED_JSONL, find_shard, read_shard
from data_pipeline.steps.base import Step, TaskContext

if TYPE_CHECKING:
    from data_pipeline.executors.base import PipelinePlan


@dataclass(frozen=True)
class StepShape:
    """What the streaming rules need to know of a step (PipelinePlan reads it from the steps it builds to check)."""

    stages: int
    writes_documents: bool
    drops_only: bool

    @classmethod
    def of(cls, step: Step) -> "StepShape":
        return cls(len(step.stages()), step.writes_documents, step.drops_only)


def stream_groups(plan: "PipelinePlan") -> list[list[int]]:
    """The step indices of each streaming group, in order (one step per group with keep_intermediate)."""
    groups: list[list[int]] = []
    for i, shape in enumerate(plan.shapes):
        if groups and not plan.keep_intermediate and shape.stages == 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def group_of(plan: "PipelinePlan", step_index: int) -> list[int]:
    return next(group for group in stream_groups(plan) if step_index in group)


def writes_kept_documents(plan: "PipelinePlan", step_index: int) -> bool:
    """Whether the step writes the documents it keeps to `<output>/<step>/`."""
    shapes = plan.shapes
    if not shapes[step_index].writes_documents:
        return False
    if plan.keep_intermediate:
        return True
    group = group_of(plan, step_index)
    if step_index != group[-1]:
        return False  # the group's next step takes the documents in memory
    # A dropping-only step alone in its group: the next step re-reads this step's input and applies its removals.
    return not (shapes[step_index].drops_only and len(group) == 1 and step_index != _last_writer(plan))


def kept_documents_format(plan: "PipelinePlan", step_index: int) -> str:
    """The run's output format, but zstd-compressed JSONL for documents a streamed run writes only for a later
    phase to read (the input of a dedup barrier), not the final documents."""
    if plan.keep_intermediate or plan.output_format != "jsonl" or step_index == _last_writer(plan):
        return plan.output_format
    return COMPRESSED_JSONL


def _last_writer(plan: "PipelinePlan") -> int:
    return max((i for i, shape in enumerate(plan.shapes) if shape.writes_documents), default=-1)


def input_rows(plan: "PipelinePlan", step_index: int, rank: int) -> Iterator[Document | Quarantined]:
    """The rows step `step_index` reads in task `rank`: the plan's input (with its quarantined rows) for the
    first step, else the documents the step before it kept."""
    if step_index == 0:
        return read_input_shard(plan.input, rank, plan.tasks, fingerprints=plan.input_files)
    previous = step_index - 1
    if writes_kept_documents(plan, previous):
        name = plan.steps[previous].name
        path = find_shard(plan.root / name, rank)
        if path is None:
            raise FileNotFoundError(f"{plan.root / name}: shard {rank} missing; step {name} did not finish")
        return read_shard(path)
    return _reapplied(plan, previous, rank)


def _reapplied(plan: "PipelinePlan", step_index: int, rank: int) -> Iterator[Document]:
    """What a dropping-only step kept, recomputed from its input and its stored removal set, recording nothing."""
    step = plan.build(step_index)
    context = TaskContext(
        step_name=step.name,
        rank=rank,
        world_size=plan.tasks,
        work_dir=plan.root / ".work" / step.name,
        seed=plan.seed,
        run_root=plan.root,
        on_exclude=lambda doc, rule, details: None,  # recorded once, by the step's own task
    )
    step.bind(context)
    documents = (row for row in input_rows(plan, step_index, rank) if isinstance(row, Document))
    yield from step.stages()[-1].fn(documents, rank, plan.tasks)
