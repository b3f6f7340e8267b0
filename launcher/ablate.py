"""`python -m launcher.ablate SPEC.yaml [key=value ...] [--dry-run | --report-only]`: train one model per data
variant and seed on the same token budget, evaluate them at the same token counts, and write a report comparing them.

The spec (configs/ablation/example.yaml; keys in launcher/ablation_spec.py) is checked whole before anything runs:
an unknown data source, a pipeline override that does not exist or a variant whose budget differs is refused naming
the variant and the key (exit 2). Then, in order: each variant built from raw input runs its data pipeline into
<output>/data/<variant> (skipped when a finished run of the same command is there), each (variant, seed) trains in
<output>/runs/<variant>-s<seed> (skipped when complete: final checkpoint COMPLETE and evaluated; an unfinished one
resumes from its newest checkpoint), one after another here or, with slurm=true, as one `launcher.submit` job each
(this command then waits for them), and at the end <output>/report.md, report.json and plot.png. Re-running the
command after a failure or a kill redoes only what is missing. `--dry-run` checks the spec and lists what would run;
`--report-only` writes the report from the runs as they are. Hydra multirun over `launcher.train` still works
for sweeps of training keys; this command is the paved road for comparing data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Optional

from launcher.ablation_report import run_complete, write_report
from launcher.ablation_spec import AblationPlan, PipelineRun, Run, load_spec, plan
from launcher.job_config import HELP_FLAGS
from launcher.validation import ConfigError

USAGE = "usage: python -m launcher.ablate SPEC.yaml [key=value ...] [--dry-run | --report-only]"
PIPELINE_RECORD = "ablation_pipeline.json"  # the command that made a pipeline output, written when it finished
SLURM_POLL_S = 2.0


def _log(message: str) -> None:
    print(f"ablate: {message}", flush=True)


def pipeline_done(pipeline: PipelineRun) -> bool:
    record = pipeline.output / PIPELINE_RECORD
    return record.is_file() and json.loads(record.read_text()) == pipeline.record()


def run_pipeline(pipeline: PipelineRun) -> None:
    """`python -m data_pipeline run ...` (it resumes a killed run from its own completion markers)."""
    if pipeline_done(pipeline):
        _log(f"data of {pipeline.variant}: reusing the finished pipeline output {pipeline.output}")
        return
    _log(f"data of {pipeline.variant}: python -m data_pipeline run {' '.join(pipeline.args)}")
    wait = ["--wait"] if "executor=slurm" in pipeline.args else []  # its Slurm jobs must end before training
    result = subprocess.run([sys.executable, "-m", "data_pipeline", "run", *pipeline.args, *wait])
    if result.returncode != 0:
        raise RuntimeError(f"the data pipeline of variant {pipeline.variant} failed (exit {result.returncode})")
    tmp = pipeline.output / f".{PIPELINE_RECORD}.tmp"
    tmp.write_text(json.dumps(pipeline.record()))
    os.replace(tmp, pipeline.output / PIPELINE_RECORD)


def train_locally(run: Run) -> None:
    _log(f"training {run.name} ({run.max_steps} steps)")
    result = subprocess.run([sys.executable, "-m", "launcher.train", *run.overrides])
    if result.returncode != 0 or not run_complete(run):
        raise RuntimeError(f"run {run.name} failed (exit {result.returncode}); its log is in {run.run_dir}")


def submit(run: Run, cluster: list[str]) -> str:
    """One job through `launcher.submit` (its own validation, rendering and run directory rules); the job id."""
    result = subprocess.run(
        [sys.executable, "-m", "launcher.submit", *cluster, *run.overrides], capture_output=True, text=True
    )
    match = re.search(r"^submitted job (\d+)", result.stdout, re.M)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"submitting {run.name} failed: {result.stdout}{result.stderr}".strip())
    _log(f"submitted {run.name} as job {match.group(1)}")
    return match.group(1)


def active_jobs(names: list[str]) -> dict[str, str]:
    """Job name -> id of this user's pending or running jobs with those names: a re-run after this command was
    killed waits for the jobs it submitted instead of submitting the runs twice."""
    if not names:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "--me", "-o", "%j %i", "--name", ",".join(names)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
    return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())


def wait_for_jobs(job_ids: list[str]) -> None:
    """Until none of the jobs is pending or running (a requeued job counts as pending)."""
    while job_ids:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True)
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise RuntimeError(f"squeue failed: {out.stderr.strip()}")
        job_ids = [j for j in job_ids if j in out.stdout.split()]
        if job_ids:
            time.sleep(SLURM_POLL_S)


def execute(ablation: AblationPlan) -> list[Run]:
    """Run what is missing; the runs still incomplete afterwards (only after Slurm jobs that failed)."""
    for pipeline in ablation.pipelines.values():
        run_pipeline(pipeline)
    missing = [run for run in ablation.runs if not run_complete(run)]
    _log(f"{len(ablation.runs) - len(missing)} of {len(ablation.runs)} run(s) complete; {len(missing)} to train")
    if ablation.spec.slurm:
        active = active_jobs([run.job_name for run in missing])
        for run in missing:
            if run.job_name in active:
                _log(f"{run.name}: job {active[run.job_name]} is already queued or running; waiting for it")
        jobs = [active.get(run.job_name) or submit(run, list(ablation.spec.cluster)) for run in missing]
        wait_for_jobs(jobs)
        return [run for run in missing if not run_complete(run)]
    for run in missing:
        train_locally(run)
    return []


def describe(ablation: AblationPlan) -> str:
    """What a run of the command would do now, one line per pipeline and training run."""
    lines = [f"ablation {ablation.spec.name} in {ablation.output}:"]
    for pipeline in ablation.pipelines.values():
        state = "done, reused" if pipeline_done(pipeline) else "to run"
        lines.append(f"  data {pipeline.variant}: python -m data_pipeline run {' '.join(pipeline.args)} [{state}]")
    for run in ablation.runs:
        state = "complete" if run_complete(run) else "to train"
        lines.append(f"  run {run.name}: {run.max_steps} steps, evaluated at steps {run.eval_steps} [{state}]")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in HELP_FLAGS:
        print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
        return 0 if argv else 2
    report_only, dry_run = "--report-only" in argv, "--dry-run" in argv
    args = [a for a in argv if a not in ("--report-only", "--dry-run")]
    unknown = [a for a in args[1:] if a.startswith("-") or "=" not in a]
    if unknown:
        print(f"unknown argument(s) {unknown}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        ablation = plan(load_spec(args[0], args[1:]))
    except ConfigError as exc:
        print(f"config error: {exc} [nothing was run]", file=sys.stderr, flush=True)
        return 2
    if dry_run:
        print(describe(ablation), flush=True)
        return 0
    try:
        failed = [] if report_only else execute(ablation)
    except RuntimeError as exc:
        print(f"error: {exc}; re-run the command to continue with what is missing", file=sys.stderr, flush=True)
        return 1
    if failed:
        names = ", ".join(f"{r.name} ({r.run_dir})" for r in failed)
        print(f"error: incomplete after their jobs ended: {names}; re-run to resubmit them", file=sys.stderr)
        return 1
    report = write_report(ablation)
    _log(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
