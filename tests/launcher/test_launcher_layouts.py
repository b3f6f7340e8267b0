"""Every parallel layout trains through the real launcher (`torchrun -m launcher.train parallel=<layout>`) and
matches a single-process run with the same global batch: the per-step losses in metrics.jsonl agree to 1e-5
(relative) for data parallel and ZeRO, 1e-4 for TP/CP/PP/EP. Sharded layouts start from the single-process
weights (the trainer initialises the full model from the seed and scatters it), so the comparison is exact up to
reduction order. Plus exact resumes for a pipeline-parallel run and a ZeRO run.

Each torchrun launch costs ~5-15 s here, so runs are 6 steps of a tiny model, shared between tests of a module.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from launcher_testing import PYTHON, REPO, child_env, losses, tiny_overrides

pytestmark = pytest.mark.distributed

STEPS = 6
# Heads and KV heads divisible by 2 for tensor parallel; seq_len 32 divisible by 2 * cp.
MODEL = {"model.n_heads": 4, "model.n_kv_heads": 2}
# A top-2-of-4 MoE (configs/model/mixtral_tiny.yaml shrunk by the tiny overrides). The load-balancing loss is
# off: it is a product of per-rank token statistics, so it differs when expert parallel splits the batch.
MOE = {"model": "mixtral_tiny", "model.moe.expert_hidden_dim": 32, "model.moe.aux_loss_weight": 0.0}
DP_RTOL, SHARDED_RTOL = 1e-5, 1e-4


def layout(name, nproc, rtol, *, extra=None, reference="dense", slow=False):
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(name, nproc, rtol, extra or {}, reference, id=name, marks=marks)


LAYOUTS = [
    layout("fsdp", 2, DP_RTOL),
    layout("tp", 2, SHARDED_RTOL),
    layout("cp", 2, SHARDED_RTOL),
    layout("zero2", 2, DP_RTOL),
    layout("pp", 2, SHARDED_RTOL),
    layout("ddp", 2, DP_RTOL, slow=True),
    layout("zero1", 2, DP_RTOL, slow=True),
    layout("zero3", 2, DP_RTOL, slow=True),
    layout("ep", 2, SHARDED_RTOL, extra=MOE, reference="moe", slow=True),
    layout("hsdp", 4, DP_RTOL, slow=True),
    layout("fsdp_tp", 4, SHARDED_RTOL, slow=True),
    layout("pp_fsdp", 4, SHARDED_RTOL, slow=True),
    layout("3d", 8, SHARDED_RTOL, slow=True),
]


def overrides(shards: Path, run_dir: Path, extra: dict) -> list[str]:
    return tiny_overrides(shards, run_dir, max_steps=STEPS, **{"trainer.checkpoint_every": 3, **MODEL, **extra})


def launch(args: list[str], nproc: int, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command a user types: `python -m launcher.train ...`, under torchrun for more than one process."""
    runner = [PYTHON, "-m", "launcher.train"]
    if nproc > 1:
        runner = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                  "launcher.train"]
    # The shared-memory CPU all-reduce of DeepSpeed is a ~90 s C++ build and only a CPU speed-up: off in tests.
    env = child_env(tmp, LOOM_DEEPSPEED_SHM_COMM="0", TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    result = subprocess.run([*runner, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    refusal = "not wired into the training loop yet"  # launcher/config.py's validate, until that check goes
    if result.returncode != 0 and refusal in result.stderr:
        message = next(line for line in result.stderr.splitlines() if refusal in line)
        pytest.skip(f"launcher/config.py still refuses this layout: {message.strip()}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """Run directories by key, each run launched once per module (the references and the layouts)."""
    cache: dict[str, Path] = {}

    def get(key: str, nproc: int, extra: dict) -> Path:
        if key not in cache:
            tmp = tmp_path_factory.mktemp(key)
            launch(overrides(shards, tmp / "run", extra), nproc, tmp)
            cache[key] = tmp / "run"
        return cache[key]

    return get


REFERENCES = {"dense": {}, "moe": MOE}


def assert_losses_match(got: dict[int, float], want: dict[int, float], rtol: float, what: str, steps) -> None:
    for step in steps:
        assert abs(got[step] - want[step]) <= rtol * abs(want[step]), (
            f"step {step}: {what} loss {got[step]!r} vs single process {want[step]!r} (rtol {rtol})"
        )


@pytest.mark.parametrize("name,nproc,rtol,extra,reference", LAYOUTS)
def test_layout_matches_single_process(runs, name, nproc, rtol, extra, reference):
    want = losses(runs(f"single_{reference}", 1, REFERENCES[reference]))
    got = losses(runs(name, nproc, {"parallel": name, **extra}))
    assert sorted(got) == list(range(1, STEPS + 1)), got
    assert_losses_match(got, want, rtol, f"parallel={name}", range(1, STEPS + 1))
    assert got[STEPS] < got[1], f"parallel={name} did not learn: {got}"


@pytest.mark.parametrize("name,rtol", [("pp", 0.0), ("zero2", 0.0)])
def test_resume_continues_exactly(runs, shards, tmp_path, name, rtol):
    """Drop the last checkpoint of a finished run, relaunch the same command (trainer.resume=auto): it resumes
    from step 3 under the same layout and repeats steps 4-6 bit for bit (pipeline: DCP of the stage modules and
    their optimizer; ZeRO: DCP for weights/schedule/data/RNG, DeepSpeed's own files for the optimizer)."""
    finished = runs(name, 2, {"parallel": name})
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    result = launch(overrides(shards, run_dir, {"parallel": name}), 2, tmp_path)
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000003'}" in result.stdout + result.stderr
    got, want = losses(run_dir), losses(finished)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step in range(4, STEPS + 1):
        assert abs(got[step] - want[step]) <= rtol * abs(want[step]), f"step {step}: {got[step]!r} != {want[step]!r}"


def test_zero_checkpoint_weights_load_into_another_layout(runs, shards, tmp_path):
    """A ZeRO checkpoint's "model" entry is the full weights in the common DCP layout: a single-process run
    started from it (trainer.init_from) begins at the ZeRO run's final weights, so its first loss is below the
    fresh run's first loss."""
    source = runs("zero2", 2, {"parallel": "zero2"}) / "checkpoints" / f"step_{STEPS:08d}"
    fresh = losses(runs("single_dense", 1, {}))
    launch(overrides(shards, tmp_path / "run", {"trainer.init_from": str(source), "trainer.max_steps": 3,
                                                "schedule.warmup_steps": 1}), 1, tmp_path)
    started = losses(tmp_path / "run")
    assert started[1] < fresh[1] - 0.05, (started, fresh)
