"""Per-rank step and data times at log steps (launcher/callbacks/stragglers.py): a rank whose batches take 0.3 s
longer to read is named as the slowest reader in metrics.jsonl and in a warning with its host, at every log
step."""

from __future__ import annotations

import json
import os

import pytest
from launcher_testing import REPO, launch, tiny_overrides

pytestmark = pytest.mark.distributed

DELAY_S = 0.3
# Loaded by every Python process of the test through PYTHONPATH: local rank 1 reads each batch 0.3 s late.
SLOW_READS = f"""
import os

if os.environ.get("LOCAL_RANK") == "1":
    import time
    from launcher import data

    _next_batch = data.TokenBatches.next_batch

    def slow_next_batch(self):
        time.sleep({DELAY_S})
        return _next_batch(self)

    data.TokenBatches.next_batch = slow_next_batch
"""


def test_a_rank_slow_to_read_its_batches_is_named(shards, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_READS)
    pythonpath = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", str(REPO))])
    result = launch(
        tiny_overrides(shards, tmp_path / "run", max_steps=4, **{"parallel": "ddp", "trainer.log_every": 2}),
        2,
        tmp_path,
        PYTHONPATH=pythonpath,
    )
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "step_time/max_s" in r]
    assert [r["step"] for r in logged] == [2, 4]
    for record in logged:
        assert record["data_time/slowest_rank"] == 1 and record["data_time/max_s"] >= DELAY_S
        # DDP's gradient all-reduce makes rank 0 wait for rank 1: both steps take the delay
        assert record["step_time/min_s"] >= DELAY_S
    output = result.stdout + result.stderr
    assert "straggler at step 2: rank 1 on" in output and "for its data time" in output, output[-3000:]
