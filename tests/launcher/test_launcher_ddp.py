"""Data parallel over 2 gloo ranks: matches one process with the same global batch (to 1e-5), runs under
torchrun, stops on a SIGUSR1 sent to one rank only (the ranks agree at step end) and resumes bitwise."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
from launcher_testing import (
    PYTHON,
    REPO,
    checkpoint_complete,
    child_env,
    free_port,
    losses,
    start_train,
    tiny_overrides,
    wait_for,
)

pytestmark = pytest.mark.distributed
MAX_STEPS = 16


@pytest.fixture(scope="module")
def ddp_baseline(shards, tmp_path_factory):
    """An uninterrupted 2-rank run launched the usual way: torchrun --standalone ... parallel=ddp."""
    tmp = tmp_path_factory.mktemp("ddp_baseline")
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "launcher.train",
        *tiny_overrides(shards, tmp / "run"),
        "parallel=ddp",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=child_env(tmp), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return tmp / "run"


def start_ranks(shards, run_dir, tmp_path, tag: str) -> list[subprocess.Popen]:
    """Two ranks started by hand with torchrun's environment variables, so the test can signal one of them.
    No parallel= override: the default all-ones layout on 2 processes becomes DDP over both."""
    port = str(free_port())
    return [
        start_train(
            tiny_overrides(shards, run_dir),
            tmp_path,
            f"{tag}_rank{rank}.log",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        for rank in range(2)
    ]


def wait_all(procs, timeout=180) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_ddp_matches_single_process(ddp_baseline, single_baseline):
    ddp, single = losses(ddp_baseline), losses(single_baseline)
    assert sorted(ddp) == list(range(1, MAX_STEPS + 1))
    for step in range(1, 11):
        assert abs(ddp[step] - single[step]) <= 1e-5, f"step {step}: ddp {ddp[step]} vs single {single[step]}"
    assert ddp[MAX_STEPS] < ddp[1] - 0.1, "the DDP run did not learn"


def test_ddp_sigusr1_on_one_rank_then_bitwise_resume(shards, ddp_baseline, tmp_path):
    run_dir = tmp_path / "run"
    procs = start_ranks(shards, run_dir, tmp_path, "first")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 180, "the step-4 checkpoint", procs)
        procs[1].send_signal(signal.SIGUSR1)  # Slurm's pre-emption warning, to rank 1 only: rank 0 must learn of
        # it through the end-of-step all-reduce
    finally:
        codes = wait_all(procs)
    logs = [(tmp_path / f"first_rank{r}.log").read_text() for r in range(2)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert "stop requested (another rank)" in logs[0] and "stop requested (SIGUSR1)" in logs[1]
    stopped_at = max(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))
    assert 4 <= stopped_at < MAX_STEPS

    codes = wait_all(start_ranks(shards, run_dir, tmp_path, "resume"))
    resume_log = (tmp_path / "resume_rank0.log").read_text()
    assert codes == [0, 0], resume_log[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped_at:08d}'}" in resume_log
    want, got = losses(ddp_baseline), losses(run_dir)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    for step in range(stopped_at + 1, MAX_STEPS + 1):
        assert got[step] == want[step], f"step {step}: resumed {got[step]!r} != uninterrupted {want[step]!r}"


def test_fsdp_checkpoint_reshards_onto_one_process(shards, tmp_path):
    """FSDP2 over 2 ranks learns; its sharded checkpoint resumes on 1 process (DCP reshards) and continues with the
    losses the 2-rank run had. (FSDP initialises on the meta device, so its weights are not the single-process
    ones: the comparison is with itself.)"""
    run_dir = tmp_path / "run"
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "launcher.train",
        *tiny_overrides(shards, run_dir),
        "parallel=fsdp",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=child_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    fsdp = losses(run_dir)
    assert sorted(fsdp) == list(range(1, MAX_STEPS + 1)) and fsdp[MAX_STEPS] < fsdp[1] - 0.1

    shutil.rmtree(run_dir / "checkpoints" / f"step_{MAX_STEPS:08d}")  # resume from the step-12 FSDP checkpoint
    result = subprocess.run(
        [PYTHON, "-m", "launcher.train", *tiny_overrides(shards, run_dir)],
        cwd=REPO,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000012'}" in result.stdout
    resumed = losses(run_dir)
    for step in range(13, MAX_STEPS + 1):
        assert abs(resumed[step] - fsdp[step]) <= 1e-5, f"step {step}: 1 process {resumed[step]} vs fsdp {fsdp[step]}"


def test_fsdp_saves_after_held_out_loss_and_sample_at_the_last_step(shards, tmp_path):
    """The README's `parallel=fsdp` run ends with a held-out loss, a text sample and a save at one step. The held-out
    forward leaves FSDP's gathered weights registered; the sample must not take those for the optimizer's (the save
    then failed with a KeyError in get_optimizer_state_dict)."""
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(shards, run_dir, max_steps=8, **{"trainer.eval_every": 4, "trainer.eval_batches": 1})
    overrides = [o for o in overrides if not o.startswith("trainer.sample_every=")] + ["trainer.sample_every=0"]
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "launcher.train"]
    result = subprocess.run(
        [*cmd, *overrides, "parallel=fsdp"],
        cwd=REPO,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert checkpoint_complete(run_dir, 8)
