"""The order of a pipeline run, shared by the executors that drive it from one process (local, Ray): what runs,
when a stage's barrier is, when stats are merged and the quarantine limit checked. An executor only says how a
list of pending tasks runs (a process pool, Ray tasks); so a change of what is scheduled applies to all of them.

The run holds the exclusive lock on `<output>/.lock` from start to end (cluster/ownership.py), so the temporary
files swept at start can only be a dead run's, and it saves the plan with its input fingerprints first
(save_plan_checked: a rerun resumes only the same plan on the same input). The executor's runner is entered after
that and left before the lock is released: tasks it still has running when a stage fails finish under the lock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable

from cluster.ownership import hold_lock
from data_pipeline.executors.base import (
    PipelinePlan,
    check_quarantine,
    merge_step_stats,
    save_plan_checked,
    stage_names,
    task_done,
)
from data_pipeline.shards import remove_stale_temporaries

Task = tuple[int, int, int]  # (step index, stage index, rank); a reduce stage has the one rank 0
# Runs every task of the list (all of one stage) and returns when all have finished; raises if one failed.
RunTasks = Callable[[list[Task]], None]


def run_plan(
    plan: PipelinePlan, runner: Callable[[], AbstractContextManager[RunTasks]], progress: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Run every step of the plan, stage by stage, with the tasks that have no completion marker yet; return the
    merged stats per step name. `runner()` gives the executor's way to run a stage's pending tasks, for the run."""
    plan.root.mkdir(parents=True, exist_ok=True)
    lock = hold_lock(plan.root, f"output={plan.root}")
    try:
        remove_stale_temporaries(plan.root)
        save_plan_checked(plan)
        all_stats: dict[str, dict[str, Any]] = {}
        with runner() as run_tasks:
            for step_index, spec in enumerate(plan.steps):
                for stage_index, (stage, per_shard) in enumerate(stage_names(plan, step_index)):
                    ranks = range(plan.tasks) if per_shard else range(1)
                    pending = [r for r in ranks if not task_done(plan, step_index, stage_index, r)]
                    progress(f"{spec.name}/{stage}: {len(pending)} of {len(ranks)} tasks to run")
                    if pending:
                        run_tasks([(step_index, stage_index, rank) for rank in pending])  # the stage's barrier
                all_stats[spec.name] = merge_step_stats(plan, spec.name)
                if step_index == 0:
                    check_quarantine(plan)  # stop before any later step when the input is mostly bad
    finally:
        lock.close()
    return all_stats
