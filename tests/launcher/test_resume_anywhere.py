"""One checkpoint format for every engine: a run resumes under any other layout, engine (torch layouts, DeepSpeed
ZeRO 1/2/3, pipeline) and world size, and continues the uninterrupted single-process run (fp32, tiny model,
through the real launcher under torchrun on gloo) to 1e-4 relative in every logged loss.

- Default suite: one run directory passes through a cycle of layouts that crosses every engine boundary at least
  once (zero2 -> fsdp -> zero3 -> pp -> tp -> zero1 -> ddp -> single -> zero2 x2 -> zero2 x1), a few steps per
  leg, each leg resuming the previous leg's final checkpoint (the layout is operational: the same run dir resumes
  under another one). A constant schedule lets each leg stop at its own trainer.max_steps.
- `slow`: the full matrix. Every layout trains 30 steps once (cosine schedule, a checkpoint at step 15); every
  ordered pair (source, target) then resumes the source's step-15 checkpoint under the target layout for the last
  15 steps; plus zero2 x2 -> zero2 x1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from launcher_testing import launch, losses, tiny_overrides

pytestmark = pytest.mark.distributed

RTOL = 1e-4
# Heads and KV heads divisible by 2 for tensor parallel.
MODEL = {"model.n_heads": 4, "model.n_kv_heads": 2}
# (config name, processes): every layout family and engine at two ranks, and one process.
LAYOUTS = {
    "single": ("single", 1),
    "ddp": ("ddp", 2),
    "fsdp": ("fsdp", 2),
    "tp": ("tp", 2),
    "pp": ("pp", 2),
    "zero1": ("zero1", 2),
    "zero2": ("zero2", 2),
    "zero3": ("zero3", 2),
    "zero2_x1": ("zero2", 1),
}


def assert_continues(got: dict[int, float], want: dict[int, float], steps, what: str) -> float:
    """Every step's loss within RTOL of the uninterrupted run's; returns the largest relative difference."""
    missing = [step for step in steps if step not in got]
    assert not missing, f"{what}: no loss logged for steps {missing}"
    worst = 0.0
    for step in steps:
        diff = abs(got[step] - want[step]) / abs(want[step])
        assert diff <= RTOL, f"{what}: step {step} loss {got[step]!r} vs uninterrupted {want[step]!r} ({diff:.2e})"
        worst = max(worst, diff)
    return worst


# ------------------------------------------------------------------------------------------- default: a cycle
CYCLE = ["zero2", "fsdp", "zero3", "pp", "tp", "zero1", "ddp", "single", "zero2", "zero2_x1"]
LEG = 2  # steps per leg
# Each leg stops at its own trainer.max_steps, so the schedule must not depend on it (validation also wants the
# warmup shorter than a leg); the matrix below resumes a cosine schedule mid-way.
CYCLE_SCHEDULE = {"schedule": "constant", "schedule.warmup_steps": 1}


def cycle_overrides(shards: Path, run_dir: Path, layout: str, max_steps: int) -> list[str]:
    extra = {**MODEL, **CYCLE_SCHEDULE, "trainer.checkpoint_every": LEG, "parallel": LAYOUTS[layout][0]}
    return tiny_overrides(shards, run_dir, max_steps=max_steps, **extra)


def test_one_run_crosses_every_engine_boundary(shards, tmp_path):
    total = LEG * len(CYCLE)
    reference = tmp_path / "reference"
    launch(cycle_overrides(shards, reference, "single", total), 1, tmp_path)
    want = losses(reference)

    run_dir = tmp_path / "run"
    for leg, layout in enumerate(CYCLE):
        end = LEG * (leg + 1)
        result = launch(cycle_overrides(shards, run_dir, layout, end), LAYOUTS[layout][1], tmp_path)
        if leg:
            assert f"step_{LEG * leg:08d} (step {LEG * leg})" in result.stdout + result.stderr, (
                f"leg {leg} ({layout}) did not resume from step {LEG * leg}"
            )
        previous = CYCLE[leg - 1] if leg else "start"
        assert_continues(losses(run_dir), want, range(end - LEG + 1, end + 1), f"{previous} -> {layout}")


# ------------------------------------------------------------------------------------------- slow: the matrix
HALF, FULL = 15, 30
MATRIX = [name for name in LAYOUTS if name != "zero2_x1"]
# Ordered so that a partial run covers every source and target evenly: zero2 x2 -> x1, then every layout to the
# next one in MATRIX, then to the one after, ...; resuming under the same layout last.
PAIRS = [("zero2", "zero2_x1")] + [
    (MATRIX[i], MATRIX[(i + shift) % len(MATRIX)]) for shift in [*range(1, len(MATRIX)), 0] for i in range(len(MATRIX))
]


def matrix_overrides(shards: Path, run_dir: Path, layout: str) -> list[str]:
    extra = {**MODEL, "trainer.checkpoint_every": HALF, "parallel": LAYOUTS[layout][0]}
    return tiny_overrides(shards, run_dir, max_steps=FULL, **extra)


@pytest.fixture(scope="module")
def full_runs(shards, tmp_path_factory):
    """Each layout's uninterrupted 30-step run (checkpoints at steps 15 and 30), launched once per module."""
    cache: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in cache:
            tmp = tmp_path_factory.mktemp(f"full_{layout}")
            launch(matrix_overrides(shards, tmp / "run", layout), LAYOUTS[layout][1], tmp)
            cache[layout] = tmp / "run"
        return cache[layout]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("source,target", PAIRS, ids=[f"{s}-to-{t}" for s, t in PAIRS])
def test_every_layout_resumes_every_other(full_runs, shards, tmp_path, source, target):
    want = losses(full_runs("single"))
    checkpoint = full_runs(source) / "checkpoints" / f"step_{HALF:08d}"
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, run_dir / "checkpoints" / checkpoint.name)
    result = launch(matrix_overrides(shards, run_dir, target), LAYOUTS[target][1], tmp_path)
    assert f"resumed from {run_dir / 'checkpoints' / checkpoint.name}" in result.stdout + result.stderr
    worst = assert_continues(losses(run_dir), want, range(HALF + 1, FULL + 1), f"{source} -> {target}")
    print(f"RESUME_MATRIX {source} -> {target}: max relative loss difference {worst:.3e}")
