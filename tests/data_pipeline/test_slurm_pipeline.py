"""The data pipeline on a real Slurm (tests/local_slurm.py), run the way a user does, `python -m data_pipeline run
... executor=slurm --wait`, from a directory with a relative input: the output is byte-identical to the local
executor's; a task made to fail once is requeued alone and the result is still identical; a task that always fails
makes --wait exit non-zero naming the step and task, and the report job behind it is cancelled.

The failures come from a stand-in interpreter (cluster.python) that fails one task of the normalize step and
otherwise runs the real one; it also records the PYTHONPATH each task got. The three runs share the node at once.
normalize and heuristics stream into one another (data_pipeline/executors/streams.py): normalize's task runs both,
and heuristics' array then finds its tasks done.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_testing import output_files

from cluster.slurm import REPO
from data_pipeline.cli import build_plan, compose_config
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.synthetic import generate_corpus, write_corpus

STEPS = "pipeline.steps=[{name:normalize},{name:heuristics}]"
FAILING_PYTHON = r"""#!/bin/bash
# Arguments: -m data_pipeline.executors.slurm_task task PLAN STEP STAGE RANK (or finalize PLAN)
echo "$PYTHONPATH" >> "{record}"
if [[ "$3" == task && "$5" == 0 && "$7" == 1 ]] && {condition}; then
  echo "failing normalize task 1 on purpose" >&2
  exit 7
fi
exec "{python}" "$@"
"""


def stand_in_python(path: Path, condition: str) -> Path:
    path.write_text(
        FAILING_PYTHON.format(record=path.with_suffix(".pythonpath"), condition=condition, python=sys.executable)
    )
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def pipeline_runs(slurm, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_pipeline")
    corpus = generate_corpus(n_clean=60, n_exact_dups=5, n_near_dups=8, n_junk=8, n_contaminated=0, seed=11)
    write_corpus(corpus, work / "raw", files=2)
    reference = work / "local"
    plan, _ = build_plan(compose_config([STEPS, f"input={work / 'raw' / 'corpus'}", f"output={reference}", "tasks=2"]))
    LocalExecutor(plan, workers=1).run()

    user_site = work / "user_site"
    user_site.mkdir()
    flaky = stand_in_python(work / "flaky_python", f'[[ ! -e "{work}/failed_once" ]] && touch "{work}/failed_once"')
    broken = stand_in_python(work / "broken_python", "true")
    runs = {
        "plain": [],
        "flaky": [f"cluster.python={flaky}"],
        "broken": [f"cluster.python={broken}", "cluster.task_retries=1"],
    }
    env = slurm.env()
    env["PYTHONPATH"] = str(user_site)
    procs = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "data_pipeline",
                "run",
                STEPS,
                "input=raw/corpus",
                f"output=out_{name}",
                "tasks=2",
                "workers=2",
                "executor=slurm",
                "cluster=local_cpu",
                "cluster.mem=500M",
                *extra,
                "--wait",
            ],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, extra in runs.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                proc.kill()
        results[name] = (proc.returncode, out, err)
    return work, reference, results


def test_slurm_pipeline_relative_input_matches_local(slurm, pipeline_runs):
    work, reference, results = pipeline_runs
    rc, out, err = results["plain"]
    assert rc == 0, out + err
    output = work / "out_plain"
    assert output_files(output) == output_files(reference) and output_files(reference)
    assert (output / "report.md").exists()
    plan = json.loads((output / "plan.json").read_text())
    assert plan["input"]["path"] == str(work / "raw" / "corpus")  # absolute in the plan
    first_job = re.search(r"submitted 3 job\(s\) (\d+)\.\.", out).group(1)
    assert slurm.job(first_job)["ArrayTaskThrottle"] == "2"  # workers=2: two array tasks at a time


def test_slurm_pipeline_retries_a_failed_task_alone(pipeline_runs):
    work, reference, results = pipeline_runs
    rc, out, err = results["flaky"]
    assert rc == 0, out + err
    assert (work / "failed_once").exists()
    assert output_files(work / "out_flaky") == output_files(reference)
    logs = {p.name: p.read_text() for p in (work / "out_flaky" / "slurm_logs").glob("loom-normalize-*.out")}
    retried = [name for name, text in logs.items() if "requeueing this task alone" in text]
    assert len(retried) == 1 and retried[0].endswith("_1.out"), logs  # task 1 only, not the array
    for line in (work / "flaky_python.pythonpath").read_text().splitlines():
        assert line.split(":") == [str(REPO), str(work / "user_site")]  # the code first, the user's path kept


def test_slurm_pipeline_wait_names_the_failed_task(slurm, pipeline_runs):
    work, _, results = pipeline_runs
    rc, out, err = results["broken"]
    assert rc == 1, out + err
    message = err.strip().splitlines()[-1]
    assert "step normalize (stage run) failed" in message and "task 1 of 2" in message, message
    assert "after 2 attempt(s)" in message  # the first try and its one retry
    assert str(work / "out_broken" / "slurm_logs") in message
    report_job = re.search(r"submitted 3 job\(s\) \d+\.\.(\d+)", out).group(1)
    assert slurm.job(report_job)["JobState"] == "CANCELLED"
    assert not (work / "out_broken" / "report.md").exists()
