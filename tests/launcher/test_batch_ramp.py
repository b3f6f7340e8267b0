"""trainer.batch_ramp: the schedule, its validation, exact data accounting (every sample of an epoch read once,
across the ramp and across a resume on another layout), and a run killed with -9 during the ramp that resumes
bitwise."""

from __future__ import annotations

import json
import signal

import pytest
from launcher_testing import checkpoint_complete, losses, run_train, start_train, tiny_overrides, wait_for

from data_pipeline.formats import PackedDataset
from launcher.batch_ramp import GlobalBatchSchedule, ramp_problem
from launcher.config import TrainConfig
from launcher.data import TokenBatches
from launcher.validation import ConfigError, validate

# The tiny run (seq_len 32, global batch 8, micro batches of 2): 2 sequences per step until 16 samples were read,
# then 4 until 32, 6 until 48, then 8 (stages = 3, tokens = 48 samples x 32).
RAMP = {"trainer.batch_ramp.start": 2, "trainer.batch_ramp.increment": 2, "trainer.batch_ramp.tokens": 48 * 32}
RAMP_BATCHES = [2] * 8 + [4] * 4 + [6] * 3 + [8]  # steps 1..16


def test_schedule_grows_in_equal_stages_and_lands_on_the_global_batch():
    ramp = GlobalBatchSchedule(full=8, seq_len=32, start=2, increment=2, tokens=48 * 32)
    samples, batches = 0, []
    for _ in range(16):
        batches.append(ramp.at(samples))
        samples += batches[-1]
    assert batches == RAMP_BATCHES
    assert ramp.at(10**9) == 8 and GlobalBatchSchedule(full=8, seq_len=32).at(0) == 8


def test_a_ramp_that_cannot_run_is_refused_up_front():
    assert ramp_problem(0, 0, 0, full=8, divisor=2) is None
    assert "all three must be positive" in ramp_problem(2, 0, 100, full=8, divisor=2)
    assert "smaller than the global batch" in ramp_problem(8, 2, 100, full=8, divisor=2)
    assert "must land on the global batch" in ramp_problem(2, 4, 100, full=8, divisor=2)
    assert "trainer.batch_ramp.increment=3" in ramp_problem(2, 3, 100, full=8, divisor=2)  # 3 micro batches of 2?
    cfg = TrainConfig()
    cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size = 8, 2
    cfg.trainer.batch_ramp.start, cfg.trainer.batch_ramp.increment, cfg.trainer.batch_ramp.tokens = 2, 2, 4096
    assert validate(cfg, 1).batch_schedule.at(0) == 2
    cfg.trainer.batch_ramp.start, cfg.trainer.batch_ramp.increment = 3, 5  # lands on 8, but 3 rows on 2s
    with pytest.raises(ConfigError, match="trainer.batch_ramp.start=3 is not a multiple"):
        validate(cfg, 1)
    cfg.trainer.batch_ramp.start, cfg.trainer.batch_ramp.increment = 2, 2
    cfg.parallel.engine, cfg.parallel.zero_stage = "deepspeed", 1
    with pytest.raises(ConfigError, match="needs a torch layout"):
        validate(cfg, 1)


def _ranks(shards, degree, schedule):
    return [
        TokenBatches(
            PackedDataset(shards),
            seq_len=32,
            global_batch=schedule.full,
            dp_rank=rank,
            dp_degree=degree,
            seed=3,
            val_fraction=0.05,
            batch_schedule=schedule,
        )
        for rank in range(degree)
    ]


def test_every_sample_of_an_epoch_is_read_once_across_the_ramp_and_a_resume(shards):
    """Two data-parallel ranks read the ramp; halfway through, a single process resumes their position. The
    (position, window) stream every rank reports is one gapless stream, and each epoch's windows are a
    permutation of all of them."""
    schedule = GlobalBatchSchedule(full=16, seq_len=32, start=4, increment=4, tokens=32 * 200)
    ranks = _ranks(shards, 2, schedule)
    n = ranks[0].n_windows
    read: list[tuple[int, int]] = []
    seen_batches = set()
    while ranks[0].samples < n // 2:
        for loader in ranks:
            rows = loader.next_batch()
            assert rows.shape[0] == loader.global_batch // 2
            read += zip(*(part.tolist() for part in loader.last_read))
        seen_batches.add(ranks[0].global_batch)
    assert seen_batches == {4, 8, 12, 16}  # the whole ramp was read on two ranks
    (resumed,) = _ranks(shards, 1, schedule)
    resumed.load_state_dict(json.loads(json.dumps(ranks[0].state_dict())))  # as a checkpoint holds it
    while resumed.samples < 2 * n:
        resumed.next_batch()
        read += zip(*(part.tolist() for part in resumed.last_read))
    read.sort()
    assert [position for position, _ in read] == list(range(len(read)))  # nothing skipped, nothing twice
    for epoch in (0, 1):
        windows = [w for p, w in read if p // n == epoch]
        assert sorted(windows) == list(range(n)), f"epoch {epoch} does not read every window exactly once"


def test_kill9_during_the_ramp_resumes_bitwise(shards, tmp_path):
    overrides = dict(RAMP)
    baseline = tmp_path / "baseline"
    result = run_train(tiny_overrides(shards, baseline, **overrides), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    records = [json.loads(line) for line in (baseline / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_batch"] for r in records] == RAMP_BATCHES

    run_dir = tmp_path / "run"
    proc = start_train(tiny_overrides(shards, run_dir, **overrides), tmp_path, "killed.log")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 8), 150, "the step-8 checkpoint", [proc])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped_at = max(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))
    assert 8 <= stopped_at < 16, f"the kill did not land during the ramp (last checkpoint {stopped_at})"
    result = run_train(tiny_overrides(shards, run_dir, **overrides), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    want, got = losses(baseline), losses(run_dir)
    for step in range(stopped_at + 1, 17):
        assert got[step] == want[step], f"step {step}: resumed loss {got[step]!r} != uninterrupted {want[step]!r}"

    changed = run_train(tiny_overrides(shards, run_dir, **{**overrides, "trainer.batch_ramp.start": 4}), tmp_path)
    assert changed.returncode != 0 and "trainer.batch_ramp.start" in changed.stderr  # another batch: refused
