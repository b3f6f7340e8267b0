"""The Slurm executor's jobs, run by a stand-in `sbatch` that executes each job's script at once (in
submission order, every array index): the generated commands, the sbatch template and the task entry point
must produce the same files as the local executor, each job after the first must depend on the previous one."""

from __future__ import annotations

import json
import os
import sys

from omegaconf import OmegaConf
from pipeline_testing import output_files, run_clean_pipeline

from data_pipeline.cli import build_plan, compose_config
from data_pipeline.executors.base import stage_names
from data_pipeline.executors.slurm import SlurmExecutor
from data_pipeline.synthetic import generate_corpus, write_corpus

FAKE_SBATCH = r"""#!PYTHON
import json, os, re, subprocess, sys
args = sys.argv[1:]
log = os.environ["FAKE_SBATCH_LOG"]
options = [a for a in args if a.startswith("--")]
rest = [a for a in args if not a.startswith("--")]
array = next((a.split("=", 1)[1] for a in options if a.startswith("--array=")), None)
env = dict(os.environ)
for option in options:
    if option.startswith("--export="):
        for item in option.split("=", 1)[1].split(",")[1:]:
            key, value = item.split("=", 1)
            env[key] = value
indices = [None]
if array:
    first, last = re.match(r"(\d+)-(\d+)", array).groups()
    indices = range(int(first), int(last) + 1)
for index in indices:
    if index is not None:
        env["SLURM_ARRAY_TASK_ID"] = str(index)
    result = subprocess.run(["bash", *rest], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        sys.exit(1)
with open(log, "a") as f:
    f.write(json.dumps(args) + "\n")
n = sum(1 for _ in open(log))
print(f"{1000 + n};cluster")
"""


def test_slurm_jobs_match_local_run(tmp_path):
    paths = write_corpus(
        generate_corpus(n_clean=60, n_exact_dups=5, n_near_dups=8, n_junk=6, n_contaminated=3, seed=5),
        tmp_path / "source",
        files=2,
    )
    reference = tmp_path / "local"
    run_clean_pipeline(paths["corpus"], paths["eval"], reference, tasks=2)
    fake = tmp_path / "sbatch"
    fake.write_text(FAKE_SBATCH.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "sbatch.log"
    os.environ["FAKE_SBATCH_LOG"] = str(log)
    try:
        cfg = compose_config(
            [
                "pipeline=clean",
                f"input={paths['corpus']}",
                f"output={tmp_path / 'out'}",
                f"eval_sets=[{paths['eval']}]",
                "tasks=2",
                "executor=slurm",
                "workers=1",
            ]
        )
        plan, _ = build_plan(cfg)
        jobs = SlurmExecutor(plan, OmegaConf.to_object(cfg.cluster), workers=cfg.workers, sbatch=str(fake)).submit()
        job_ids = [job.job_id for job in jobs]
    finally:
        del os.environ["FAKE_SBATCH_LOG"]
    submitted = [json.loads(line) for line in log.read_text().splitlines()]
    # normalize 1 + heuristics 1 + exact 3 + minhash 4 + boilerplate 3 + pii 1 + decontaminate 1 stages, then the
    # report job
    assert len(submitted) == len(job_ids) == 15
    assert job_ids[0] == "1001"
    for previous, args in zip(job_ids, submitted[1:]):
        assert f"--dependency=afterok:{previous}" in args
    # exact dedup's select (the fourth job) is a reduce: one task, no array
    assert "--array=0-1%1" in submitted[0] and not any(a.startswith("--array") for a in submitted[3])
    assert output_files(tmp_path / "out") == output_files(reference)
    assert (tmp_path / "out" / "report.md").exists()
    assert json.loads((tmp_path / "out" / "stats" / "heuristics.json").read_text())["tasks"] == 2


def test_slurm_dry_run_prints_commands(planted_corpus, tmp_path, capsys):
    _, paths = planted_corpus
    cfg = compose_config(
        [
            "pipeline=clean",
            f"input={paths['corpus']}",
            f"output={tmp_path / 'out'}",
            "tasks=2",
            "executor=slurm",
            "workers=3",
            "cluster.partition=cpu",
        ]
    )
    plan, skipped = build_plan(cfg)
    assert skipped == ["decontaminate"]
    jobs = SlurmExecutor(plan, OmegaConf.to_object(cfg.cluster), workers=cfg.workers).submit(dry_run=True)
    stages = sum(len(stage_names(plan, i)) for i in range(len(plan.steps)))
    assert [job.job_id for job in jobs] == [None] * (stages + 1)  # a job per stage, then the report
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == stages + 1 and all("--partition=cpu" in line for line in lines)  # one sbatch line each
    assert "pipeline.sbatch" in lines[0] and "--dependency=afterok:<job0>" in lines[1]
    assert "--array=0-1%3" in lines[0]  # workers: array tasks running at once
    assert not (tmp_path / "out" / "normalize").exists()
