"""Resume inside a task (data_pipeline/executors/task_progress.py): a run killed with SIGKILL at random moments
inside one long task, ten times, resumes each time from the task's last committed input row, as its log says,
and ends with every output file equal to an uninterrupted run's, byte for byte."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.synthetic import generate_corpus, write_corpus

REPO = Path(__file__).resolve().parents[2]
# One streaming group (normalize -> heuristics -> PII) over one task: the long task the kills land in.
STEPS = "pipeline.steps=[{name:normalize},{name:heuristics},{name:pii}]"
KILLS = 10
RESUMED = re.compile(r"step normalize\+heuristics\+pii task 0: resuming from input row (\d+)")


def command(corpus: Path, output: Path, checkpoint_rows: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "data_pipeline",
        "run",
        STEPS,
        f"input={corpus}",
        f"output={output}",
        "tasks=1",
        "report=false",
        f"checkpoint_rows={checkpoint_rows}",
    ]


def data_files(root: Path) -> dict[str, bytes]:
    """Every file the run publishes (documents, exclusions, quarantine), not its timing stats or markers."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.relative_to(root).parts[0] not in ("stats", ".markers", ".progress")
        and p.name not in ("plan.json", ".lock")
    }


def counts(root: Path) -> dict:
    """The steps' counts and scores (their timing aside), which a resumed task restores from its checkpoint."""
    timing = {"time_s", "cpu_s", "started", "finished", "stage_time_s", "wall_s"}
    out = {}
    for path in sorted((root / "stats").glob("*/task-*.json")):
        out[str(path.relative_to(root))] = {k: v for k, v in json.loads(path.read_text()).items() if k not in timing}
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_inside")
    documents = generate_corpus(n_clean=5000, n_exact_dups=0, n_near_dups=0, n_junk=400, n_contaminated=0, seed=4)
    return write_corpus(documents, root / "raw", files=1)["corpus"]


def test_kill_9_ten_times_inside_a_task_resumes_from_committed_rows_and_equals_an_uninterrupted_run(corpus, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reference = tmp_path / "reference"
    subprocess.run(command(corpus, reference, 25), cwd=REPO, env=env, check=True, capture_output=True)
    output = tmp_path / "killed"
    progress = output / ".progress" / "normalize" / "task-00000.json"
    rng = random.Random(0)
    committed_before = []
    resumed_from = []
    for attempt in range(KILLS + 1):
        log = tmp_path / f"attempt-{attempt}.log"
        with open(log, "w") as handle:
            process = subprocess.Popen(
                command(corpus, output, 25), cwd=REPO, env=env, stdout=handle, stderr=handle, start_new_session=True
            )
        if attempt < KILLS:
            # Wait for this attempt's own first checkpoint, then kill at a random moment after it.
            last = json.loads(progress.read_text())["input_rows"] if progress.is_file() else -1
            deadline = time.time() + 120
            while time.time() < deadline and process.poll() is None:
                try:
                    if json.loads(progress.read_text())["input_rows"] != last:
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.002)
            assert process.poll() is None, f"attempt {attempt} finished before it could be killed: {log.read_text()}"
            time.sleep(rng.uniform(0.0, 0.05))
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            committed_before.append(json.loads(progress.read_text())["input_rows"])
        else:
            assert process.wait(timeout=300) == 0, log.read_text()
        if attempt:
            found = RESUMED.findall(log.read_text())
            assert found, f"attempt {attempt} did not resume: {log.read_text()[-2000:]}"
            resumed_from.append(int(found[0]))
    # Each rerun started where the run before it last committed, and got further every time.
    assert resumed_from == committed_before
    assert all(b > a for a, b in zip(committed_before, committed_before[1:]))
    assert data_files(output) == data_files(reference) and data_files(reference)
    assert counts(output) == counts(reference)
    assert not progress.exists()  # removed once the task finished


def _run_dying_at_a_checkpoint(overrides: list[str], head: str, nth: int) -> None:
    """In a forked child: run the pipeline and die without cleanup (as kill -9) right after `head`'s task commits
    its nth checkpoint."""
    from data_pipeline.cli import build_plan, compose_config
    from data_pipeline.executors import task_progress
    from data_pipeline.executors.local import LocalExecutor

    original = task_progress.TaskProgress.save
    saves = []

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.group_names[0] == head:
            saves.append(1)
            if len(saves) == nth:
                os._exit(137)

    task_progress.TaskProgress.save = save_then_die
    plan, _ = build_plan(compose_config(overrides))
    LocalExecutor(plan, workers=1).run()
    os._exit(0)


@pytest.mark.parametrize("head", ["exact_dedup", "minhash_dedup"])
def test_dedup_steps_resume_mid_shard_at_the_right_document_number(head, tmp_path):
    """The dedup steps' output stages number their documents (removal sets are by position): resumed mid-shard
    they count on from the checkpoint, so the same documents go."""
    import multiprocessing

    from data_pipeline.cli import build_plan, compose_config
    from data_pipeline.executors.local import LocalExecutor

    documents = generate_corpus(n_clean=150, n_exact_dups=30, n_near_dups=40, n_junk=0, n_contaminated=0, seed=6)
    source = write_corpus(documents, tmp_path / "raw", files=1)["corpus"]
    steps = "pipeline.steps=[{name:exact_dedup},{name:minhash_dedup},{name:tokenize,params:{vocab_size:300}}]"

    def overrides(output: Path) -> list[str]:
        return [steps, f"input={source}", f"output={output}", "tasks=2", "report=false", "checkpoint_rows=7"]

    reference = tmp_path / "reference"
    LocalExecutor(build_plan(compose_config(overrides(reference)))[0], workers=1).run()
    output = tmp_path / "killed"
    child = multiprocessing.get_context("fork").Process(
        target=_run_dying_at_a_checkpoint, args=(overrides(output), head, 3)
    )
    child.start()
    child.join(120)
    assert child.exitcode == 137
    checkpoint = json.loads((output / ".progress" / head / "task-00000.json").read_text())
    assert checkpoint["input_rows"] == 21  # died mid-shard, after its third checkpoint
    LocalExecutor(build_plan(compose_config(overrides(output)))[0], workers=1).run()
    assert data_files(output) == data_files(reference)
    assert counts(output) == counts(reference)
