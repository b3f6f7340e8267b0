"""Run a pipeline plan on this machine: each per-shard stage over a process pool, reduce stages inline.

Waiting for the pool to drain is the stage barrier. Worker count changes only speed: tasks and their files are
fixed by the plan (`tasks` shards), so workers=1 and workers=4 write identical outputs.

One run per output directory at a time: the run holds an exclusive lock on `<output>/.lock` (flock, released by the
kernel however the process ends), so the temporary files swept at start can only be a dead run's. Pool workers
exit when the main process dies, even by kill -9, so no orphan keeps writing into a directory a rerun is using
(both from cluster/ownership.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Optional

from cluster.ownership import die_with_parent, hold_lock
from data_pipeline.executors.base import (
    PipelinePlan,
    check_quarantine,
    merge_step_stats,
    run_task,
    save_plan_checked,
    stage_names,
    task_done,
)
from data_pipeline.shards import remove_stale_temporaries

log = logging.getLogger(__name__)


def _run_task_args(args: tuple) -> bool:
    plan_json, step_index, stage_index, rank = args
    return run_task(PipelinePlan.from_json(plan_json), step_index, stage_index, rank)


class LocalExecutor:
    def __init__(self, plan: PipelinePlan, workers: int = 1, progress: Optional[Callable[[str], None]] = None) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: must be at least 1")
        self.plan = plan
        self.workers = workers
        self.progress = progress or log.info

    def run(self) -> dict[str, dict[str, Any]]:
        """Run every step; return the merged stats per step name."""
        plan = self.plan
        plan.root.mkdir(parents=True, exist_ok=True)
        lock = hold_lock(plan.root, f"output={plan.root}")
        pool = None
        try:
            remove_stale_temporaries(plan.root)
            save_plan_checked(plan)
            all_stats: dict[str, dict[str, Any]] = {}
            if self.workers > 1:
                # fork keeps start-up cheap on Linux; spawn elsewhere. Steps are rebuilt from the plan in the worker.
                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context(method),
                    initializer=die_with_parent,
                    initargs=(os.getpid(),),
                )
            for step_index, spec in enumerate(plan.steps):
                for stage_index, (stage, per_shard) in enumerate(stage_names(plan, step_index)):
                    ranks = range(plan.tasks) if per_shard else range(1)
                    pending = [r for r in ranks if not task_done(plan, step_index, stage_index, r)]
                    self.progress(f"{spec.name}/{stage}: {len(pending)} of {len(ranks)} tasks to run")
                    if pool is None or len(pending) <= 1:
                        for rank in pending:
                            run_task(plan, step_index, stage_index, rank)
                    else:
                        args = [(plan.to_json(), step_index, stage_index, r) for r in pending]
                        list(pool.map(_run_task_args, args))  # re-raises the first task error
                all_stats[spec.name] = merge_step_stats(plan, spec.name)
                if step_index == 0:
                    check_quarantine(plan)  # stop before any later step when the input is mostly bad
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            lock.close()
        return all_stats
