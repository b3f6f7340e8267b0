"""Run a pipeline plan on this machine: each per-shard stage over a process pool, reduce stages inline.

Waiting for the pool to drain is the stage barrier. Worker count changes only speed: tasks and their files are
fixed by the plan (`tasks` shards), so workers=1 and workers=4 write identical outputs.

One run per output directory at a time: the run holds an exclusive lock on `<output>/.lock` (flock, released by the
kernel however the process ends; schedule.run_plan), so the temporary files swept at start can only be a dead
run's. Pool workers exit when the main process dies, even by kill -9, so no orphan keeps writing into a directory a
rerun is using (both from cluster/ownership.py).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from cluster.ownership import die_with_parent
from data_pipeline.executors.base import PipelinePlan, run_task
from data_pipeline.executors.schedule import RunTasks, Task, run_plan

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
        return run_plan(self.plan, self._runner, self.progress)

    @contextmanager
    def _runner(self) -> Iterator[RunTasks]:
        """A stage's tasks in this process (one worker, or one task pending), else over a pool kept for the run."""
        plan = self.plan
        pool = None
        if self.workers > 1:
            # fork keeps start-up cheap on Linux; spawn elsewhere. Steps are rebuilt from the plan in the worker.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context(method),
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )

        def run_tasks(tasks: list[Task]) -> None:
            if pool is None or len(tasks) <= 1:
                for step_index, stage_index, rank in tasks:
                    run_task(plan, step_index, stage_index, rank)
            else:
                list(pool.map(_run_task_args, [(plan.to_json(), *task) for task in tasks]))  # re-raises the first error

        try:
            yield run_tasks
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
