"""Run a pipeline plan on a Ray cluster (`executor=ray`): every task of a stage is one Ray task, the stage's barrier
is waiting for all of them, and the order of the run is schedule.run_plan's, as on the local executor. `ray` is
imported only here, when executor=ray runs.

The driver (the `python -m data_pipeline run` process) joins the cluster at `ray_address` (`auto`: the Ray started
on this machine with `ray start`), else at RAY_ADDRESS, else starts a Ray of its own on this machine for the run.
It holds the output directory's lock, and ships the plan (its JSON, put once in the object store) to the tasks,
which run `run_task` as a local or Slurm task does: the same files, the same completion markers, so the output is
byte-identical and a rerun skips finished tasks. The output directory (and the input) must be on storage every
node sees at the same path (NFS, Lustre, ...); the code too, unless it is installed on every node: the driver's
checkout is put first on the tasks' PYTHONPATH, the driver's own PYTHONPATH after it (as the Slurm jobs get it).

Failures: a task whose worker process or node dies is rerun by Ray, on any node, up to `ray_max_retries` times.
A killed attempt leaves no output a rerun would trust (files are written under temporary names, renamed, the
marker last), and the next attempt removes the temporaries of its own task before it starts (their names carry
the rank), wherever the dead one ran; it trusts that the dead attempt is gone, which is what Ray reports before it
retries. (A node cut off by the network but still running is the exception: its attempt and the rerun could both
run; they write the same bytes, but temporary names carry the writer's pid, not its host, so two attempts with
the same pid on two nodes would share a temporary file.)

A Python error in a task is the task's fault (bad input, a bug), so it is not retried: the run stops once the
stage's running tasks have ended and raises the task's TaskFailed, naming the step, stage and task, as the local
executor does. If the driver dies, Ray ends its tasks; rerun the same command to resume.

`workers` is the number of tasks in flight at once (as on Slurm); each task asks Ray for one CPU, so the
cluster's CPUs are the other limit.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from data_pipeline.executors.base import PipelinePlan, TaskFailed, run_task, stage_names
from data_pipeline.executors.schedule import RunTasks, Task, run_plan
from data_pipeline.executors.task_progress import PROGRESS_DIR

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
# Tests only: names a file holding "<step> <stage> <rank> kill|raise"; the first attempt of that task claims it
# (renames it to <file>.claimed, writing its pid and node there) and, just before it would rename its first finished
# temporary file into place (mid-task: its output written, nothing published), kills its own worker with SIGKILL
# (`kill`) or raises PlantedFault (`raise`). A retry finds no trigger and runs normally.
FAULT_ONCE_ENV = "LOOM_RAY_TEST_FAULT_ONCE"


class PlantedFault(RuntimeError):
    """The error FAULT_ONCE_ENV's `raise` plants in a task (tests only)."""


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _plant_fault_if_asked(plan: PipelinePlan, step_index: int, stage_index: int, rank: int) -> None:
    trigger = os.environ.get(FAULT_ONCE_ENV)
    if not trigger:
        return
    try:
        *task, how = Path(trigger).read_text().split()
    except (FileNotFoundError, ValueError):
        return
    if task != [plan.steps[step_index].name, stage_names(plan, step_index)[stage_index][0], str(rank)]:
        return
    claimed = Path(f"{trigger}.claimed")
    try:
        os.rename(trigger, claimed)  # one attempt only
    except FileNotFoundError:
        return
    claimed.write_text(json.dumps({"pid": os.getpid(), "node": _node_id()}))
    armed = [True]  # once: Ray reuses a worker whose task raised, and the hook cannot be removed

    def before_first_publish(event: str, args: tuple) -> None:
        if event != "os.rename" or not armed[0]:
            return
        # an output file published: a temporary one, or a resumable task's partial one (not its checkpoint file)
        unfinished = os.fspath(args[0])
        if f"/{PROGRESS_DIR}/" not in unfinished and (".tmp." in unfinished or unfinished.endswith(".partial")):
            armed[0] = False
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise PlantedFault(f"planted fault before publishing {os.fspath(args[0])}")

    sys.addaudithook(before_first_publish)


def run_task_on_worker(plan_json: dict[str, Any], step_index: int, stage_index: int, rank: int) -> dict[str, Any]:
    """What a Ray task runs: the task, then where it ran (the driver logs it)."""
    plan = PipelinePlan.from_json(plan_json)
    _plant_fault_if_asked(plan, step_index, stage_index, rank)
    ran = run_task(plan, step_index, stage_index, rank)
    return {"ran": ran, "node": _node_id(), "pid": os.getpid()}


class RayExecutor:
    def __init__(
        self,
        plan: PipelinePlan,
        address: Optional[str] = None,
        workers: int = 1,
        max_retries: int = 3,
        progress: Optional[Callable[[str], None]] = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: must be at least 1 (on Ray: tasks running at once)")
        if importlib.util.find_spec("ray") is None:
            raise ValueError("executor=ray needs the ray package on the driver and every node: pip install 'loom[ray]'")
        if max_retries < 0:
            raise ValueError(f"ray_max_retries={max_retries}: must be >= 0 (reruns of a task whose worker died)")
        self.plan = plan
        self.address = address
        self.workers = workers
        self.max_retries = max_retries
        self.progress = progress or log.info

    def run(self) -> dict[str, dict[str, Any]]:
        """Run every step on the cluster; return the merged stats per step name."""
        return run_plan(self.plan, self._runner, self.progress)

    def runtime_env(self) -> dict[str, Any]:
        """The tasks' environment on every node: this checkout first on PYTHONPATH, the driver's PYTHONPATH kept."""
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env_vars = {"PYTHONPATH": path}
        if os.environ.get(FAULT_ONCE_ENV):
            env_vars[FAULT_ONCE_ENV] = os.environ[FAULT_ONCE_ENV]
        return {"env_vars": env_vars}

    @contextmanager
    def _runner(self) -> Iterator[RunTasks]:
        import ray

        address = self.address or os.environ.get("RAY_ADDRESS") or None
        joined = not ray.is_initialized()
        if joined:
            if address:
                log.info("joining the Ray cluster at %s", address)
                ray.init(address=address, runtime_env=self.runtime_env())
            else:  # "local": never join some other Ray found running on this machine (ray_address=auto does)
                log.info("no ray_address and no RAY_ADDRESS: starting a Ray on this machine for the run")
                ray.init(address="local", runtime_env=self.runtime_env(), include_dashboard=False)
        try:
            remote = ray.remote(run_task_on_worker).options(
                num_cpus=1, max_retries=self.max_retries, retry_exceptions=False
            )
            plan_ref = ray.put(self.plan.to_json())
            yield lambda tasks: self._run_stage(ray, remote, plan_ref, tasks)
        finally:
            if joined:
                ray.shutdown()

    def _describe(self, task: Task) -> str:
        step_index, stage_index, rank = task
        stage = stage_names(self.plan, step_index)[stage_index][0]
        return f"step {self.plan.steps[step_index].name}, stage {stage}, task {rank} of {self.plan.tasks}"

    def _why_lost(self, ray: Any, exc: BaseException) -> str:
        died = (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.LocalRayletDiedError,
            ray.exceptions.OutOfMemoryError,
        )
        if isinstance(exc, died):
            return (
                f"its Ray worker died on each of {self.max_retries + 1} attempt(s) (ray_max_retries="
                f"{self.max_retries}); nothing it wrote was published: run the same command again to resume"
            )
        return "Ray could not run it"

    def _run_stage(self, ray: Any, remote: Any, plan_ref: Any, tasks: list[Task]) -> None:
        """Keep `workers` tasks in flight until all have ended; after a failure submit no more, let the running
        ones end, then raise the first failure."""
        waiting = list(tasks)
        running: dict[Any, Task] = {}
        failure: Optional[BaseException] = None
        origin: Optional[BaseException] = None  # the Ray error it came with (its text has the remote traceback)
        while waiting or running:
            while waiting and failure is None and len(running) < self.workers:
                task = waiting.pop(0)
                running[remote.remote(plan_ref, *task)] = task
            if not running:
                break
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                task = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task raised: its own error, not retried
                    if failure is None:
                        failure, origin = (exc.cause if isinstance(exc.cause, Exception) else exc), exc
                    log.error("%s failed", self._describe(task))
                except ray.exceptions.RayError as exc:  # Ray could not finish it: its worker or node died, ...
                    lost = TaskFailed(
                        f"{self._describe(task)}: {self._why_lost(ray, exc)}: {type(exc).__name__}: {exc}"
                    )
                    if failure is None:
                        failure, origin = lost, exc
                    log.error("%s", lost)
                else:
                    log.info(
                        "%s %s on node %s (pid %d)",
                        self._describe(task),
                        "ran" if result["ran"] else "was already done",
                        result["node"],
                        result["pid"],
                    )
        if failure is not None:
            raise failure from origin
