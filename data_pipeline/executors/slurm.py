"""Run a pipeline plan on Slurm: every stage of every step is one sbatch job (an array over shards for per-shard
stages), each submitted with --dependency=afterok on the previous one, then a last job merges stats and writes
the report. The submitting process returns at once; the plan is saved as JSON in the output directory and the
jobs run `slurm/pipeline.sbatch`, which calls back into this module (`task` / `finalize`).
"""
from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from data_pipeline.executors.base import PipelinePlan, merge_step_stats, run_task, save_plan_checked, stage_names

log = logging.getLogger(__name__)
SBATCH_SCRIPT = Path(__file__).resolve().parents[2] / "slurm" / "pipeline.sbatch"


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


class SlurmExecutor:
    def __init__(self, plan: PipelinePlan, slurm_cfg: Any, report: bool = True, sbatch: str = "sbatch") -> None:
        self.plan = plan
        self.cfg = slurm_cfg
        self.report = report
        self.sbatch = sbatch
        if not SBATCH_SCRIPT.is_file():
            raise FileNotFoundError(f"{SBATCH_SCRIPT}: the sbatch template is missing from the checkout")

    def _common_args(self, job_name: str) -> list[str]:
        args = [self.sbatch, "--parsable", f"--job-name={job_name}", f"--time={_get(self.cfg, 'time', '01:00:00')}",
                f"--cpus-per-task={_get(self.cfg, 'cpus_per_task', 1)}", f"--mem={_get(self.cfg, 'mem', '4G')}",
                f"--chdir={self.plan.root / 'slurm_logs'}"]
        for key in ("partition", "account"):
            if _get(self.cfg, key):
                args.append(f"--{key}={_get(self.cfg, key)}")
        python = _get(self.cfg, "python") or sys.executable
        repo = SBATCH_SCRIPT.parents[1]
        args.append(f"--export=ALL,LOOM_PYTHON={python},PYTHONPATH={repo}")
        args += list(_get(self.cfg, "sbatch_args", []) or [])
        return args

    def commands(self) -> list[list[str]]:
        """The sbatch command lines, in submission order; `{dep}` stands for the previous job id."""
        plan_path = self.plan.root / "plan.json"
        commands = []
        max_parallel = int(_get(self.cfg, "max_parallel", 0) or 0)
        for step_index, spec in enumerate(self.plan.steps):
            for stage_index, (stage, per_shard) in enumerate(stage_names(self.plan, step_index)):
                args = self._common_args(f"loom-{spec.name}-{stage}")
                if per_shard:
                    array = f"0-{self.plan.tasks - 1}" + (f"%{max_parallel}" if max_parallel else "")
                    args.append(f"--array={array}")
                commands.append(args + [str(SBATCH_SCRIPT), str(plan_path), str(step_index), str(stage_index)])
        if self.report:
            commands.append(self._common_args("loom-report") + [str(SBATCH_SCRIPT), "finalize", str(plan_path)])
        return commands

    def submit(self) -> list[str]:
        """Submit every job; return the job ids (in dry-run mode, print the commands and return [])."""
        self.plan.root.mkdir(parents=True, exist_ok=True)
        (self.plan.root / "slurm_logs").mkdir(exist_ok=True)
        save_plan_checked(self.plan)
        job_ids: list[str] = []
        for command in self.commands():
            if job_ids:
                command = command[:2] + [f"--dependency=afterok:{job_ids[-1]}"] + command[2:]
            if _get(self.cfg, "dry_run", False):
                print(shlex.join(command))
                job_ids.append(f"<job{len(job_ids)}>")
                continue
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}\ncommand: {shlex.join(command)}")
            job_ids.append(result.stdout.strip().split(";")[0])
            log.info("submitted %s as job %s", command[2], job_ids[-1])
        return [] if _get(self.cfg, "dry_run", False) else job_ids


def finalize(plan: PipelinePlan) -> None:
    from data_pipeline.report import write_report

    for spec in plan.steps:
        merge_step_stats(plan, spec.name)
    write_report(plan.root, [s.name for s in plan.steps])


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if len(argv) == 5 and argv[0] == "task":
        plan = PipelinePlan.load(Path(argv[1]))
        ran = run_task(plan, int(argv[2]), int(argv[3]), int(argv[4]))
        log.info("task step=%s stage=%s rank=%s %s", argv[2], argv[3], argv[4], "done" if ran else "already done (skipped)")
        return 0
    if len(argv) == 2 and argv[0] == "finalize":
        finalize(PipelinePlan.load(Path(argv[1])))
        return 0
    print("usage: python -m data_pipeline.executors.slurm task PLAN STEP STAGE RANK | finalize PLAN", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
