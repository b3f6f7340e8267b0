"""Run a pipeline plan on Slurm: every stage of every step is one sbatch job (an array over shards for per-shard
stages), each submitted with --dependency=afterok on the previous one, then a last job merges stats and writes
the report. The plan is saved as JSON in the output directory and the jobs run `slurm/pipeline.sbatch`, which
calls back into `python -m data_pipeline.executors.slurm_task` (`task` / `finalize`).

Resources come from the `cluster` config group (the one training uses): time, CPUs, memory, partition, account,
qos, extra sbatch options, exported variables and the interpreter. `workers` is honoured as on the local
executor, as the number of tasks running at once (the array's `%` limit). Jobs run in the submitting directory
and the plan's input paths are absolute, so a relative input means what it means locally. A failed array task
requeues itself alone (that index only) up to `cluster.task_retries` times; completion markers make a requeued
or resubmitted task skip finished work. `wait_for_jobs` follows the chain and names the step and task that
failed for good, with its log, and cancels the jobs that can no longer run.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cluster.config import ClusterConfig
from cluster.slurm import REPO, SLURM_DIR, TERMINAL_STATES, job_python, job_records, resource_options
from data_pipeline.executors.base import (
    PipelinePlan,
    check_quarantine,
    merge_step_stats,
    save_plan_checked,
    stage_names,
)

log = logging.getLogger(__name__)
SBATCH_SCRIPT = SLURM_DIR / "pipeline.sbatch"
LOG_DIR = "slurm_logs"
REPORT_FILE = "report.md"


class PipelineJobFailed(RuntimeError):
    """A task of the Slurm chain failed after its retries; the message names the step, stage, task and log."""


@dataclass
class StageJob:
    """One sbatch job of the chain: a stage of a step (an array of `tasks` when per-shard), or the report."""

    name: str
    step: Optional[str]  # None for the report job
    stage: Optional[str]
    tasks: int  # array size; 1 for a reduce stage or the report
    array: bool
    script_args: list[str]
    job_id: Optional[str] = None

    def describe(self) -> str:
        return "the report job" if self.step is None else f"step {self.step} (stage {self.stage})"


class SlurmExecutor:
    def __init__(
        self,
        plan: PipelinePlan,
        cluster: ClusterConfig,
        workers: int = 1,
        report: bool = True,
        sbatch: str = "sbatch",
        cwd: Optional[Path] = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers}: must be at least 1 (on Slurm: array tasks running at once)")
        if not SBATCH_SCRIPT.is_file():
            raise FileNotFoundError(f"{SBATCH_SCRIPT}: the sbatch template is missing from the checkout")
        self.plan = plan
        self.cluster = cluster
        self.workers = workers
        self.report = report
        self.sbatch = sbatch
        self.cwd = Path(cwd or os.getcwd()).resolve()

    @property
    def log_dir(self) -> Path:
        return self.plan.root / LOG_DIR

    def jobs(self) -> list[StageJob]:
        plan_path = str(self.plan.root / "plan.json")
        jobs = []
        for step_index, spec in enumerate(self.plan.steps):
            for stage_index, (stage, per_shard) in enumerate(stage_names(self.plan, step_index)):
                jobs.append(
                    StageJob(
                        f"loom-{spec.name}-{stage}",
                        spec.name,
                        stage,
                        self.plan.tasks if per_shard else 1,
                        per_shard,
                        [plan_path, str(step_index), str(stage_index)],
                    )
                )
        if self.report:
            jobs.append(StageJob("loom-report", None, None, 1, False, ["finalize", plan_path]))
        return jobs

    def command(self, job: StageJob, dependency: Optional[str]) -> list[str]:
        output = "%x-%A_%a.out" if job.array else "%x-%j.out"
        args = [self.sbatch, "--parsable", f"--job-name={job.name}"]
        if dependency:
            args.append(f"--dependency=afterok:{dependency}")
        if job.array:
            args.append(f"--array=0-{job.tasks - 1}%{self.workers}")
        args += resource_options(self.cluster, self.cluster.cpus_per_task)
        args += [
            "--requeue",
            "--open-mode=append",
            f"--chdir={self.cwd}",
            f"--output={self.log_dir / output}",
            "--export=ALL",
            *[str(a) for a in self.cluster.sbatch_args],
        ]
        return args + [str(SBATCH_SCRIPT), *job.script_args]

    def environment(self) -> dict[str, str]:
        """What the jobs need besides the submitter's environment (exported whole): the interpreter, the code
        (prepended to the job's PYTHONPATH by the script, never replacing it), the retry count, cluster.env."""
        env = dict(os.environ)
        env.update(
            LOOM_PYTHON=job_python(self.cluster), LOOM_REPO=str(REPO), LOOM_TASK_RETRIES=str(self.cluster.task_retries)
        )
        env.update({str(k): str(v) for k, v in self.cluster.env.items()})
        return env

    def submit(self, dry_run: bool = False) -> list[StageJob]:
        """Submit every job in order, each depending on the previous; return them with their ids. With dry_run,
        print the commands (`<jobN>` standing for earlier ids) and submit nothing."""
        jobs = self.jobs()
        if dry_run:
            for i, job in enumerate(jobs):
                print(shlex.join(self.command(job, f"<job{i - 1}>" if i else None)))
            return jobs
        self.plan.root.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        save_plan_checked(self.plan)
        env = self.environment()
        previous = None
        for job in jobs:
            command = self.command(job, previous)
            result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=self.cwd)
            if result.returncode != 0:
                raise RuntimeError(
                    f"sbatch failed ({result.returncode}): {result.stderr.strip()}\ncommand: {shlex.join(command)}"
                )
            job.job_id = previous = result.stdout.strip().split(";")[0]
            log.info("submitted %s as job %s", job.name, job.job_id)
        return jobs


def _done_tasks(plan: PipelinePlan, job: StageJob) -> set[int]:
    if job.step is None:
        return {0} if (plan.root / REPORT_FILE).exists() else set()
    return {rank for rank in range(job.tasks) if plan.marker(job.step, job.stage, rank).exists()}


def _record_of_task(records: list[dict[str, str]], job: StageJob, rank: int) -> dict[str, str]:
    if not job.array:
        return records[0] if records else {}
    return next((r for r in records if r.get("ArrayTaskId") == str(rank)), {})


def wait_for_jobs(
    plan: PipelinePlan, jobs: list[StageJob], poll_s: float = 2.0, env: Optional[dict[str, str]] = None
) -> None:
    """Follow the chain job by job until each has ended; raise PipelineJobFailed naming the first step, stage and
    task that did not complete (after its retries), after cancelling the jobs still queued behind it.

    A task succeeded iff its completion marker exists (the report job: iff report.md exists); Slurm's state
    (`scontrol show job`, no accounting database needed) gives the exit code and attempt count of one that did
    not. A job Slurm has already forgotten counts as ended."""
    for index, job in enumerate(jobs):
        records: list[dict[str, str]] = []
        while True:
            found = job_records(job.job_id, env=env)
            if found is None:
                break
            records = found
            if records and all(r.get("JobState") in TERMINAL_STATES for r in records):
                break
            time.sleep(poll_s)
        done = _done_tasks(plan, job)
        failed = [rank for rank in range(job.tasks) if rank not in done]
        if not failed:
            log.info("%s: %d of %d task(s) done (job %s)", job.describe(), job.tasks, job.tasks, job.job_id)
            continue
        details = []
        for rank in failed:
            record = _record_of_task(records, job, rank)
            attempts = int(record.get("Restarts", "0") or 0) + 1 if record else None
            details.append(
                f"task {rank}"
                + (f" of {job.tasks}" if job.array else "")
                + (
                    f": {record.get('JobState')} (exit code {record.get('ExitCode')}) after {attempts} attempt(s)"
                    if record
                    else ": no completion marker"
                )
                + (f"; log {record['StdOut']}" if record.get("StdOut") else "")
            )
        later = [j.job_id for j in jobs[index + 1 :] if j.job_id]
        if later:
            subprocess.run(["scancel", *later], capture_output=True, text=True, env=env)
        raise PipelineJobFailed(
            f"{job.describe()} failed, job {job.job_id}: "
            + "; ".join(details)
            + (f". Cancelled the {len(later)} job(s) after it." if later else "")
        )


def finalize(plan: PipelinePlan) -> None:
    from data_pipeline.quarantine import summary
    from data_pipeline.report import write_report

    merged = [merge_step_stats(plan, spec.name) for spec in plan.steps]
    log.info("%s", summary(merged[0], plan.root))
    # A one-step plan has no later task to stop: the report job fails instead, before report.md (which --wait
    # reads as success), as a local run stops before its report.
    check_quarantine(plan)
    write_report(plan.root, [s.name for s in plan.steps])
