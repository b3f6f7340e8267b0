"""Results depend on the data and `tasks`, never on the number of workers, and a run killed halfway and rerun
gives the same files as an uninterrupted one, with no partial output left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline_testing import output_files, run_clean_pipeline

from data_pipeline.shards import read_shard

REPO = Path(__file__).resolve().parents[2]


def test_workers_do_not_change_outputs(planted_corpus, planted_run, tmp_path):
    _, paths = planted_corpus
    _, _, serial_output, _ = planted_run  # workers=1, tasks=4
    run_clean_pipeline(paths["corpus"], paths["eval"], tmp_path / "parallel", tasks=4, workers=4)
    serial, parallel = output_files(serial_output), output_files(tmp_path / "parallel")
    assert len(serial) > 10
    assert serial.keys() == parallel.keys()
    assert [k for k in serial if serial[k] != parallel[k]] == []


def test_kill_and_rerun_gives_identical_output(planted_corpus, planted_run, tmp_path):
    _, paths = planted_corpus
    _, _, reference, _ = planted_run
    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "data_pipeline",
        "run",
        "pipeline=clean",
        f"input={paths['corpus']}",
        f"output={output}",
        f"eval_sets=[{paths['eval']}]",
        "tasks=4",
        "workers=1",
        "report=false",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # Kill it once some, but not all, of the minhash step's tasks have finished.
    markers = output / ".markers" / "minhash_dedup"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not (markers.exists() and any(markers.rglob("task-*"))):
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed; the test needs a larger corpus"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    final = output / "decontaminate"  # the final documents: not all written when the run was killed
    assert not final.exists() or len(list(final.glob("shard-*"))) < 4
    # Whatever was published is complete: every visible shard parses to the end.
    for shard in output.glob("*/shard-*"):
        list(read_shard(shard))
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "0 of 4 tasks to run" in rerun.stderr  # finished tasks were skipped
    assert output_files(output) == output_files(reference)
    assert list(output.rglob(".*.tmp.*")) == []
