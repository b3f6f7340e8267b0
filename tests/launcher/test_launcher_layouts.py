"""Every parallel layout trains through the real launcher (`torchrun -m launcher.train parallel=<layout>`) and
matches a single-process run with the same global batch: the per-step losses in metrics.jsonl agree to 1e-5
(relative) for data parallel and ZeRO, 1e-4 for TP/CP/PP/EP. Sharded layouts start from the single-process
weights (the trainer initialises the full model from the seed and scatters it), so the comparison is exact up to
reduction order. Plus exact resumes for a pipeline-parallel run and a ZeRO run.

Pipeline parallel also runs with several stages per rank (Interleaved1F1B, ZBVZeroBubble: 4 stages of a 4-layer
model on 2 ranks), evaluates through the schedule (its val_loss equals the single process's on the same held-out
rows), and its checkpoints resume under one process and the other way round.

Each torchrun launch costs ~5-15 s here, so runs are 6 steps of a tiny model, shared between tests of a module.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from launcher_testing import launch, losses, tiny_overrides

pytestmark = pytest.mark.distributed

STEPS = 6
# Heads and KV heads divisible by 2 for tensor parallel; seq_len 32 divisible by 2 * cp.
MODEL = {"model.n_heads": 4, "model.n_kv_heads": 2}
# A top-2-of-4 MoE (configs/model/mixtral_tiny.yaml shrunk by the tiny overrides). The load-balancing loss is
# off: it is a product of per-rank token statistics, so it differs when expert parallel splits the batch.
MOE = {"model": "mixtral_tiny", "model.moe.expert_hidden_dim": 32, "model.moe.aux_loss_weight": 0.0}
DP_RTOL, SHARDED_RTOL = 1e-5, 1e-4
# Held-out loss at steps 3 and 6 over 4 x 2 = 8 held-out rows: under pp=2 exactly one per-rank batch (global 8).
EVAL = {"trainer.eval_every": 3, "trainer.eval_batches": 4}
# Several pipeline stages per rank: 2 ranks x 2 stages of a 4-layer model, against a 4-layer single process.
DEEP = {"model.n_layers": 4}
INTERLEAVED = {
    "parallel": "pp",
    "parallel.pp_schedule": "Interleaved1F1B",
    "parallel.pp_stages_per_rank": 2,
    **DEEP,
    **EVAL,
}
ZBV = {"parallel": "pp", "parallel.pp_schedule": "ZBVZeroBubble", "parallel.pp_stages_per_rank": 2, **DEEP, **EVAL}
INTERLEAVED_ZB = {**INTERLEAVED, "parallel.pp_schedule": "InterleavedZeroBubble"}
# 2 stages per rank, each stage FSDP-sharded over 2 data-parallel ranks (4 processes).
FSDP_INTERLEAVED = {**INTERLEAVED, "parallel": "pp_fsdp"}


def layout(name, nproc, rtol, *, extra=None, reference="dense", slow=False):
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(name, nproc, rtol, extra or {}, reference, id=name, marks=marks)


LAYOUTS = [
    layout("fsdp", 2, DP_RTOL, extra=EVAL),
    layout("tp", 2, SHARDED_RTOL, extra=EVAL),
    layout("cp", 2, SHARDED_RTOL, extra=EVAL),
    layout("zero2", 2, DP_RTOL, extra=EVAL),
    layout("pp", 2, SHARDED_RTOL, extra=EVAL),
    layout("pp_interleaved", 2, SHARDED_RTOL, extra=INTERLEAVED, reference="deep"),
    layout("pp_zbv", 2, SHARDED_RTOL, extra=ZBV, reference="deep"),
    layout("pp_interleaved_zb", 2, SHARDED_RTOL, extra=INTERLEAVED_ZB, reference="deep", slow=True),
    layout("ddp", 2, DP_RTOL, slow=True),
    layout("zero1", 2, DP_RTOL, slow=True),
    layout("zero3", 2, DP_RTOL, slow=True),
    layout("ep", 2, SHARDED_RTOL, extra=MOE, reference="moe", slow=True),
    layout("hsdp", 4, DP_RTOL, slow=True),
    layout("fsdp_tp", 4, SHARDED_RTOL, slow=True),
    layout("pp_fsdp", 4, SHARDED_RTOL, extra=EVAL, slow=True),
    layout("pp_fsdp_interleaved", 4, SHARDED_RTOL, extra=FSDP_INTERLEAVED, reference="deep", slow=True),
    layout("3d", 8, SHARDED_RTOL, extra=EVAL, slow=True),
]


def overrides(shards: Path, run_dir: Path, extra: dict) -> list[str]:
    return tiny_overrides(shards, run_dir, max_steps=STEPS, **{"trainer.checkpoint_every": 3, **MODEL, **extra})


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """Run directories by key, each run launched once per module (the references and the layouts)."""
    cache: dict[str, tuple[Path, int, dict]] = {}

    def get(key: str, nproc: int, extra: dict) -> Path:
        if key not in cache:
            tmp = tmp_path_factory.mktemp(key)
            launch(overrides(shards, tmp / "run", extra), nproc, tmp)
            cache[key] = (tmp / "run", nproc, dict(extra))
        run_dir, launched_nproc, launched_extra = cache[key]
        assert (launched_nproc, launched_extra) == (nproc, extra), f"run {key!r} asked for with other settings"
        return run_dir

    return get


REFERENCES = {"dense": EVAL, "moe": MOE, "deep": {**DEEP, **EVAL}}


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


@pytest.mark.parametrize("name,extra,rtol", [("pp", EVAL, 0.0), ("zero2", EVAL, 0.0)])
def test_resume_continues_exactly(runs, shards, tmp_path, name, extra, rtol):
    """Drop the last checkpoint of a finished run, relaunch the same command (trainer.resume=auto): it resumes
    from step 3 under the same layout and repeats steps 4-6 bit for bit (pipeline: DCP of the stage modules and
    their optimizer; ZeRO: the same by-name DCP format, gathered from and scattered into its partitions)."""
    finished = runs(name, 2, {"parallel": name, **extra})
    run_dir = tmp_path / "run"
    relaunch_from_step_3(finished, run_dir, shards, {"parallel": name, **extra}, 2, tmp_path)
    got, want = losses(run_dir), losses(finished)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step in range(4, STEPS + 1):
        assert abs(got[step] - want[step]) <= rtol * abs(want[step]), f"step {step}: {got[step]!r} != {want[step]!r}"


def test_zero_checkpoint_weights_load_into_another_layout(runs, shards, tmp_path):
    """A ZeRO checkpoint's "model" entry is the full weights in the common DCP layout: a single-process run
    started from it (trainer.init_from) begins at the ZeRO run's final weights, so its first loss is below the
    fresh run's first loss."""
    source = runs("zero2", 2, {"parallel": "zero2", **EVAL}) / "checkpoints" / f"step_{STEPS:08d}"
    fresh = losses(runs("single_dense", 1, REFERENCES["dense"]))
    launch(
        overrides(
            shards,
            tmp_path / "run",
            {"trainer.init_from": str(source), "trainer.max_steps": 3, "schedule.warmup_steps": 1},
        ),
        1,
        tmp_path,
    )
    started = losses(tmp_path / "run")
    assert started[1] < fresh[1] - 0.05, (started, fresh)


def val_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


@pytest.mark.parametrize(
    "name,nproc,extra,reference",
    [
        ("pp", 2, EVAL, "dense"),
        ("pp_interleaved", 2, INTERLEAVED, "deep"),
        ("pp_zbv", 2, ZBV, "deep"),
        pytest.param("pp_interleaved_zb", 2, INTERLEAVED_ZB, "deep", marks=pytest.mark.slow),
        # 2 data-parallel ranks of 4 held-out rows each (token weighting over ranks); with tensor parallel inside.
        pytest.param("pp_fsdp", 4, EVAL, "dense", marks=pytest.mark.slow),
        pytest.param("3d", 8, EVAL, "dense", marks=pytest.mark.slow),
    ],
)
def test_pipeline_val_loss_matches_single_process(runs, name, nproc, extra, reference):
    """The held-out loss under pipeline parallel (forward-only through the schedule, one stage or several per
    rank) is the single process's on the same 8 held-out rows, at every evaluation step."""
    want = val_losses(runs(f"single_{reference}", 1, REFERENCES[reference]))
    got = val_losses(runs(name, nproc, {"parallel": name, **extra}))
    assert sorted(want) == [3, STEPS] and sorted(got) == sorted(want), (got, want)
    assert_losses_match(got, want, SHARDED_RTOL, f"{name} val", want)


SOURCES = ("large_steps", "small_steps")  # what the arithmetic shards record per document


def held_out_records(run_dir: Path) -> dict[int, dict[str, float]]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("val_")} for r in records if "val_loss" in r}


@pytest.mark.parametrize("name", ["fsdp", "tp", "cp", "zero2", "pp"])
def test_held_out_loss_per_source_matches_single_process(runs, name):
    """The held-out loss of each source of the mixed shards (`val_loss/<source>`) is the single process's under
    every layout: data parallel splits the rows, TP computes the loss on vocab-sharded logits, CP cuts the
    sequences (weighting by each chunk's tokens of that source), ZeRO through its engine, pipeline through the
    schedule (microbatch losses weighted by their tokens of that source)."""
    want = held_out_records(runs("single_dense", 1, REFERENCES["dense"]))
    got = held_out_records(runs(name, 2, {"parallel": name, **EVAL}))
    keys = {"val_loss", *(f"val_loss/{source}" for source in SOURCES)}
    assert sorted(got) == sorted(want) == [3, STEPS], (got, want)
    for step in want:
        assert keys <= set(want[step]) and keys <= set(got[step]), (got[step], want[step])
        for key in keys:
            assert_losses_match({step: got[step][key]}, {step: want[step][key]}, SHARDED_RTOL, f"{name} {key}", [step])


def test_held_out_loss_per_source_is_the_token_mean_over_that_sources_documents(runs, shards):
    """Recomputed by hand from the final checkpoint: cross-entropy of every held-out token, grouped by the source
    of the document it is predicted in (read from the shards), averaged per source; and the sources' token-weighted
    mean is the overall held-out loss."""
    import torch
    import torch.nn.functional as F
    import yaml

    from data_pipeline.formats import PackedDataset
    from launcher.data import TokenBatches
    from model.loading import load_model

    run_dir = runs("single_dense", 1, REFERENCES["dense"])
    logged = held_out_records(run_dir)[STEPS]
    model = load_model(run_dir / "checkpoints" / f"step_{STEPS:08d}").model
    data_cfg = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    data = TokenBatches(
        PackedDataset(shards),
        seq_len=data_cfg["seq_len"],
        global_batch=8,
        dp_rank=0,
        dp_degree=1,
        seed=0,
        val_fraction=data_cfg["val_fraction"],
    )
    rows = torch.cat(data.eval_batches(8, 2))
    row_sources = torch.cat(data.eval_sources(8, 2))[:, 1:]
    with torch.no_grad():
        token_losses = F.cross_entropy(
            model(rows[:, :-1]).flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="none"
        )
    token_losses = token_losses.view_as(row_sources)
    assert data.source_names == list(SOURCES)
    for index, source in enumerate(SOURCES):
        mine = row_sources == index
        assert mine.any() and not mine.all()
        assert logged[f"val_loss/{source}"] == pytest.approx(token_losses[mine].mean().item(), rel=1e-5)
    assert logged["val_loss"] == pytest.approx(token_losses.mean().item(), rel=1e-5)


def relaunch_from_step_3(finished: Path, run_dir: Path, shards: Path, extra: dict, nproc: int, tmp: Path) -> None:
    """Copy a finished run without its last checkpoint and launch `extra` on `nproc` processes in it: it must
    resume from step 3 (trainer.resume=auto) and run steps 4-6."""
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    result = launch(overrides(shards, run_dir, extra), nproc, tmp)
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000003'}" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "saved,resumed",
    [
        ("pp_interleaved", "single_deep"),
        ("single_deep", "pp_interleaved"),
        pytest.param("pp_fsdp_interleaved", "single_deep", marks=pytest.mark.slow),
    ],
)
def test_checkpoint_moves_between_interleaved_pipeline_and_one_process(runs, shards, tmp_path, saved, resumed):
    """A checkpoint saved with two pipeline stages per rank (per-stage model and optimizer state merged into the
    layout-free DCP files) resumes under one process, and a single-process checkpoint resumes split into those
    stages: steps 4-6 and the step-6 val_loss equal the uninterrupted run's."""
    settings = {
        "pp_interleaved": (2, {"parallel": "pp_interleaved", **INTERLEAVED}),
        "pp_fsdp_interleaved": (4, {"parallel": "pp_fsdp_interleaved", **FSDP_INTERLEAVED}),
        "single_deep": (1, REFERENCES["deep"]),
    }
    finished = runs(saved, *settings[saved])
    nproc, extra = settings[resumed]
    relaunch_from_step_3(finished, tmp_path / "run", shards, extra, nproc, tmp_path)
    got, want = losses(tmp_path / "run"), losses(finished)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    assert_losses_match(got, want, SHARDED_RTOL, f"{saved} resumed as {resumed}", range(4, STEPS + 1))
    assert_losses_match(val_losses(tmp_path / "run"), val_losses(finished), SHARDED_RTOL, "val", [STEPS])


# ---------------------------------------------------------------------------------------------- in-process units
SCHEDULE = {"name": "cosine", "warmup_steps": 2, "min_lr_ratio": 0.1, "decay_fraction": 0.2, "decay_shape": "linear"}


def test_lr_schedulers_resume_the_step_with_this_runs_base_lr():
    """The lr schedules of a train module's parts (pipeline stages: optimizers with other numbers of param groups)
    checkpoint only the step count; resumed, each optimizer takes the schedule's lr at that step from this run's
    optim.lr, so a deliberately changed lr takes effect at once."""
    from torch import nn

    from launcher.config import OptimConfig, ScheduleConfig
    from launcher.optim import Optimizers
    from launcher.schedule import LRSchedulers, lr_multiplier

    schedule_cfg = ScheduleConfig(**SCHEDULE)
    whole = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 4, bias=False), nn.LayerNorm(4))
    single_opt = Optimizers([whole], OptimConfig(lr=1e-3), "cpu")
    single = LRSchedulers(single_opt.optimizers, schedule_cfg, 10)
    for _ in range(3):
        single_opt.step()
        single.step()
    assert single.state_dict() == {"steps_done": 3}

    stages = [nn.Sequential(nn.Embedding(8, 4), nn.LayerNorm(4)), nn.Linear(4, 4, bias=False)]
    optimizers = Optimizers(stages, OptimConfig(lr=2e-3), "cpu")
    assert [len(o.param_groups) for o in optimizers.optimizers] == [2, 1]
    schedulers = LRSchedulers(optimizers.optimizers, schedule_cfg, 10)
    schedulers.load_state_dict(single.state_dict())
    expected = 2e-3 * lr_multiplier(schedule_cfg, 10)(3)
    assert schedulers.last_lr == pytest.approx(expected) and single.last_lr == pytest.approx(expected / 2)
    assert all(g["lr"] == pytest.approx(expected) for o in optimizers.optimizers for g in o.param_groups)
    optimizers.step()
    schedulers.step()
    assert schedulers.steps_done == 4
    assert schedulers.last_lr == pytest.approx(2e-3 * lr_multiplier(schedule_cfg, 10)(4))


def test_pipeline_eval_batches_are_whole_training_batches():
    import torch

    from launcher.train_modules.pipeline import whole_batches

    rows = [torch.arange(i * 3, i * 3 + 3).reshape(1, 3).repeat(2, 1) + torch.tensor([[0], [100]]) for i in range(3)]
    got = whole_batches(rows, 4)  # 6 rows -> one batch of 4, the last 2 dropped
    assert len(got) == 1 and torch.equal(got[0], torch.cat(rows)[:4])
    assert [b.shape[0] for b in whole_batches(rows, 3)] == [3, 3]
    assert whole_batches(rows, 8) == [] and whole_batches([], 4) == []


class _RecordingSchedule:
    """Stands in for a torch pipeline schedule: returns preset microbatch losses and records what evaluation
    ran under (backward switch, stage modes, grad mode, the per-rank program)."""

    def __init__(self, stages, batch_losses, with_eval: bool, program=None):
        self.stages, self.batch_losses, self.calls = stages, list(batch_losses), []
        self._has_backward = True
        if program is not None:
            self.pipeline_order_with_comms = program
        if with_eval:
            self.eval = self._eval

    def _eval(self, *args, **kwargs):
        self.calls.append("eval")
        saved, self._has_backward = self._has_backward, False
        try:
            return self.step(*args, **kwargs)
        finally:
            self._has_backward = saved

    def step(self, *args, target=None, losses=None):
        import torch

        program = getattr(self, "pipeline_order_with_comms", None)
        ran = {rank: [a.computation_type for a in actions] for rank, actions in program.items()} if program else None
        self.calls.append((self._has_backward, [s.training for s in self.stages], torch.is_grad_enabled(), ran))
        if losses is not None:  # two microbatches with the batch's loss
            losses.extend([torch.tensor(self.batch_losses.pop(0))] * 2)


class _PipelineOnly:
    """The part of the pipeline train module evaluate() (launcher/callbacks/val_loss.py) uses, around a bare
    Pipeline (no process group)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def train(self, mode=True):
        self.pipeline.train(mode)

    def eval_loss(self, inputs, labels):
        return self.pipeline.eval_loss(inputs, labels)


@pytest.mark.parametrize("with_eval", [True, False], ids=["schedule_eval", "torch_without_eval"])
def test_pipeline_evaluation_is_forward_only_in_eval_mode_and_token_weighted(with_eval):
    """evaluate() on a Pipeline: stages in eval mode and no gradients during the pass, the schedule's backward
    switched off (by `schedule.eval`, or by hand where a torch lacks it), train mode restored after; batches of
    8 and 16 predicted tokens with losses 1 and 4 give the token-weighted 3.0, not the batch mean 2.5."""
    import torch
    from torch import nn

    from launcher.callbacks.val_loss import evaluate
    from parallel.pipeline import Pipeline

    stages = [nn.Dropout(0.5), nn.Linear(2, 2)]
    schedule = _RecordingSchedule(stages, [1.0, 4.0], with_eval)
    pipeline = Pipeline(schedule, stages, has_first=True, has_last=True)
    pipeline.train()
    batches = [torch.zeros(2, 5, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long)]
    val_loss, val_ppl = evaluate(_PipelineOnly(pipeline), batches, torch.device("cpu"))
    assert val_loss == pytest.approx(3.0) and val_ppl == pytest.approx(math.exp(3.0))
    steps = [c for c in schedule.calls if c != "eval"]
    assert steps == [(False, [False, False], False, None)] * 2
    assert (schedule.calls.count("eval") == 2) == with_eval
    assert schedule._has_backward and all(s.training for s in stages)


def test_pipeline_evaluation_runs_only_the_forward_actions_of_a_multi_stage_program():
    """A multi-stage schedule's per-rank program runs without its backward actions during evaluation (a V
    schedule's backward hands gradients between its two local stages and fails without a backward), and is
    restored afterwards; a rank without the last stage contributes no loss."""
    from collections import namedtuple

    import torch
    from torch import nn
    from torch.distributed.pipelining.schedules import _ComputationType as Kind

    from launcher.callbacks.val_loss import evaluate
    from parallel.pipeline import Pipeline

    Action = namedtuple("Action", "computation_type")
    program = {
        0: [
            Action(Kind(k))
            for k in ("UNSHARD", "F", "SEND_F", "RECV_B", "I", "W", "B", "SEND_B", "RECV_F", "REDUCE_GRAD", "RESHARD")
        ]
    }
    stages = [nn.Linear(2, 2)]
    schedule = _RecordingSchedule(stages, [], with_eval=True, program=program)
    pipeline = Pipeline(schedule, stages, has_first=True, has_last=False)
    val_loss, _ = evaluate(_PipelineOnly(pipeline), [torch.zeros(2, 5, dtype=torch.long)], torch.device("cpu"))
    assert math.isnan(val_loss)  # one process holding no last stage: no loss anywhere
    ran = schedule.calls[1][3][0]
    assert ran == [Kind(k) for k in ("UNSHARD", "F", "SEND_F", "RECV_F", "RESHARD")]
    assert schedule.pipeline_order_with_comms is program
