"""WandbSink across resumes, without Slurm: a run resumed after a crash that had logged past its last checkpoint
continues the same wandb run and sends none of those steps again; a run started from step 0 in the same directory
gets a new wandb run; under Slurm the config carries the job. The offline files are decoded with wandb's own
protobuf definitions (tests/launcher/wandb_records.py). wandb runs in a child process, as in training."""

from __future__ import annotations

import subprocess
import sys

from launcher_testing import REPO, child_env
from wandb_records import config_values, history_steps, run_record, runs_in_order

SEGMENTS = r"""
import sys
from pathlib import Path
from launcher.config import WandbConfig
from launcher.metrics import WandbSink

run_dir = Path(sys.argv[1])
for resume_step, steps in ((0, range(1, 6)), (3, range(4, 9))):  # the second: checkpoint at 3, had logged to 5
    sink = WandbSink(WandbConfig(mode="offline"), run_dir, {"lr": 0.1}, "run", resume_step=resume_step)
    for step in steps:
        sink.log(step, {"loss": 10.0 - step, "sample": "text is not sent"})
    sink.close()
sink = WandbSink(WandbConfig(mode="offline"), run_dir, {"lr": 0.1}, "run", resume_step=0)  # started over
sink.log(1, {"loss": 1.0})
sink.close()
"""


def test_wandb_sink_continues_one_run_without_repeating_steps(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = child_env(
        tmp_path, WANDB_MODE=None, WANDB_DIR=None, SLURM_JOB_ID="77", SLURM_JOB_NUM_NODES="2", SLURM_RESTART_COUNT="1"
    )
    result = subprocess.run(
        [sys.executable, "-c", SEGMENTS, str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_in_order(run_dir / "wandb")
    assert len(runs) == 3
    first, resumed, restarted = runs
    assert run_record(first).run_id == run_record(resumed).run_id != run_record(restarted).run_id
    assert (run_dir / "wandb_run_id").read_text() == run_record(restarted).run_id
    assert history_steps(first) + history_steps(resumed) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert history_steps(restarted) == [1]
    slurm = config_values(resumed)["slurm"]
    assert slurm == {"job_id": "77", "job_name": None, "nodes": 2, "restart_count": 1}
