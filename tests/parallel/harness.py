"""Run a few training steps of a tiny model under any parallel layout and under a single process, through the
production train modules (launcher/train_modules/), so a layout test is "same losses, same final weights" in a
few lines and tests exactly what `python -m launcher.train` runs.

A `RunSpec` becomes a real `TrainConfig` (model, layout, AdamW, constant lr, synthetic tokens), validated by the
launcher's own validation into a `RunPlan`; `launcher.train_modules.build_train_module` then builds the model from
the seed (sharded layouts scatter the single-process weights), and each step feeds the step's global batch (the
same in every process) to `train_step`, each data-parallel rank its rows. Checkpoints go through the production
`Checkpointer`. Distributed runs are `torch.multiprocessing` spawns over gloo with a short process-group timeout;
rank 0 returns the per-step losses (mean over ranks, as the trainer logs them) and the full (unsharded) weights.

Starting processes and importing torch costs more than training the tiny model, so `run_layouts` runs several
specs in one spawn, and tests `plan()` their specs at import time so `planned_result()` runs every planned spec
of one world size and engine together.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import tempfile
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = REPO / "configs" / "parallel"
PG_TIMEOUT_S = 60


# ---------------------------------------------------------------------------------------------- configs
def load_parallel_config(name: str, **overrides: Any):
    """configs/parallel/<name>.yaml merged onto the ParallelConfig defaults, then `overrides` (like Hydra would)."""
    from omegaconf import OmegaConf

    from parallel.config import ParallelConfig

    path = LAYOUTS / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no parallel layout {path}; known: {sorted(p.stem for p in LAYOUTS.glob('*.yaml'))}")
    merged = OmegaConf.merge(OmegaConf.structured(ParallelConfig), OmegaConf.load(path) or {}, overrides)
    return OmegaConf.to_object(merged)


def tiny_model_config(**overrides: Any):
    """A 2-layer GQA model that every layout here can split (heads, KV heads, FFN and vocab divisible by 4)."""
    from model.config import ModelConfig

    base = dict(
        name="tiny-test",
        vocab_size=128,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        hidden_dim=128,
        max_seq_len=64,
        init_std=0.02,
    )
    base.update(overrides)
    return ModelConfig(**base)


# ---------------------------------------------------------------------------------------------- run spec/result
@dataclass
class RunSpec:
    layout: str = "single"
    world_size: int = 1
    overrides: dict = field(default_factory=dict)  # ParallelConfig fields on top of the layout yaml
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields on top of tiny_model_config()
    steps: int = 10
    global_batch: int = 4
    seq_len: int = 16
    seed: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 0.0  # 0: no clipping
    ignore_prefix: int = 0  # labels at positions < ignore_prefix are ignored (-100) in every sequence
    load_from: Optional[str] = None  # run dir whose newest checkpoint this run resumes (model, optimizer, schedule)
    save_to: Optional[str] = None  # run dir to checkpoint into after the last step
    start_step: int = 0  # step index of the first batch (so a resumed run sees the batches the reference saw)
    optim: dict = field(default_factory=dict)  # further OptimConfig fields (name="muon", muon=MuonConfig(...))

    def model_config(self):
        return tiny_model_config(**self.model_overrides)

    def parallel_config(self):
        return load_parallel_config(self.layout, **self.overrides)

    def train_config(self):
        """The launcher's TrainConfig of this spec: one micro batch per rank per step, a constant lr."""
        from launcher.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig

        return TrainConfig(
            model=self.model_config(),
            parallel=self.parallel_config(),
            data=DataConfig(name="synthetic", seq_len=self.seq_len),
            optim=OptimConfig(
                lr=self.lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                eps=self.eps,
                weight_decay=self.weight_decay,
                grad_clip=self.grad_clip,
                **self.optim,
            ),
            schedule=ScheduleConfig(name="constant", warmup_steps=0),
            trainer=TrainerConfig(
                run_dir="harness",
                seed=self.seed,
                max_steps=self.start_step + self.steps,
                global_batch_size=self.global_batch,
                micro_batch_size=self.global_batch,
                precision="fp32",
                device="cpu",
            ),
        )


@dataclass
class RunResult:
    losses: list[float]
    params: dict[str, torch.Tensor]
    rank_info: list = field(default_factory=list)  # per global rank: dp_rank, tp_rank, mesh dims


def global_batch(spec: RunSpec, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's full batch, identical in every process: tokens [B, T] and next-token labels [B, T]."""
    gen = torch.Generator().manual_seed(1000 * spec.seed + step)
    vocab = spec.model_config().vocab_size
    seq = torch.randint(0, vocab, (spec.global_batch, spec.seq_len + 1), generator=gen)
    tokens, labels = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    if spec.ignore_prefix:
        labels[:, : spec.ignore_prefix] = -100
    return tokens, labels


def build_model(spec: RunSpec):
    """The plain model of the spec, initialised from its seed on CPU (for tests of a single technique)."""
    import model as model_pkg

    torch.manual_seed(spec.seed)
    net = model_pkg.build(spec.model_config())
    net.init_weights()
    return net


def plan_for(spec: RunSpec, world_size: int):
    """The launcher's validated RunPlan of the spec (every layout rule checked, as before a real launch)."""
    from launcher.validation import validate

    # The micro batch is the whole per-rank batch: one micro batch per step, whatever the data-parallel degree.
    from parallel import ParallelDims

    dp = ParallelDims.from_config(spec.parallel_config(), world_size).dp_degree
    config = spec.train_config()
    config.trainer.micro_batch_size = spec.global_batch // dp
    return validate(config, world_size)


class _NoData:
    """The data position a harness checkpoint saves: the harness feeds batches itself."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def fingerprint(self) -> str:
        return "harness: batches fed by the test"

    def decontamination(self) -> None:
        return None


def full_state_dict(module) -> dict[str, torch.Tensor]:
    """Unsharded weights of the whole model on every rank (a collective), gathered over pipeline stages."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from launcher.train_modules.zero import ZeroTrainModule

    if isinstance(module, ZeroTrainModule):  # fp32 masters as row-sharded DTensors (the checkpoint format)
        state = module.model_state_dict()
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}
    local = {}
    for part in module.model_parts:
        state = get_model_state_dict(part, options=StateDictOptions(full_state_dict=True))
        local.update({k: v.detach().clone() for k, v in state.items()})
    if module.dims.pp == 1:
        return local
    gathered = [None] * module.dims.pp
    dist.all_gather_object(gathered, local, group=module.dims.submesh("pp").get_group())
    return {k: v for part in gathered for k, v in part.items()}


# ---------------------------------------------------------------------------------------------- running
def train(spec: RunSpec, *, world_size: int = 1) -> RunResult:
    """Build the spec's production train module and train it in this process (rank `dist.get_rank()` of
    `world_size`, or alone)."""
    from launcher.checkpoint import Checkpointer
    from launcher.distributed import DistEnv, mean_over_ranks
    from launcher.train_modules import build_train_module

    plan = plan_for(spec, world_size)
    rank = dist.get_rank() if dist.is_initialized() else 0
    env = DistEnv(rank, rank, world_size, torch.device("cpu"))
    dims = plan.dims
    dims.build_mesh("cpu")
    module = build_train_module(plan, env)
    if spec.load_from:
        step = Checkpointer(Path(spec.load_from), env, keep=0).restore(module, _NoData(), {}, allow=[])
        assert step == spec.start_step, f"resumed at step {step}, expected {spec.start_step}"
    rows, first = plan.rank_batch, dims.dp_rank() * plan.rank_batch
    losses = []
    for step in range(spec.start_step, spec.start_step + spec.steps):
        tokens, labels = global_batch(spec, step)
        out = module.train_step(tokens[first : first + rows], labels[first : first + rows])
        losses.append(float(mean_over_ranks(out.loss.detach().double().reshape(1))))
    if spec.save_to:
        Checkpointer(Path(spec.save_to), env, keep=0).save(spec.start_step + spec.steps, module, _NoData(), {})
    rank_info = [{"dp_rank": 0, "tp_rank": 0, "mesh_dims": {}}]
    if dims.mesh is not None:
        rank_info = [None] * world_size
        dist.all_gather_object(rank_info, rank_info_local(dims))
    return RunResult(losses=losses, params=full_state_dict(module), rank_info=rank_info)


def rank_info_local(dims) -> dict:
    return {
        "dp_rank": dims.dp_rank(),
        "tp_rank": dims.mesh["tp"].get_local_rank(),
        "mesh_dims": dict(zip(dims.mesh.mesh_dim_names, dims.mesh.shape)),
    }


def run_reference(spec: RunSpec) -> RunResult:
    """The single-process run the layouts are compared against."""
    ref = dataclasses.replace(spec, layout="single", world_size=1, overrides={}, load_from=None, save_to=None)
    return train(ref)


def run_layout(spec: RunSpec) -> RunResult:
    """`spec` under its layout in `spec.world_size` spawned gloo processes (in-process for one process that needs
    no process group)."""
    result = run_layouts([spec])[0]
    if isinstance(result, str):
        raise AssertionError(f"layout {spec.layout} failed:\n{result}")
    return result


def run_layouts(specs: list[RunSpec]) -> list:
    """Several specs (same world size) one after another in ONE set of spawned processes, since starting
    processes and importing torch costs more than training the tiny model. Returns, per spec, its RunResult or
    the formatted traceback of its failure, so one broken layout does not hide the others' results."""
    if not specs:
        return []
    world_size = specs[0].world_size
    if any(s.world_size != world_size for s in specs):
        raise ValueError(f"run_layouts needs one world size, got {[s.world_size for s in specs]}")
    if world_size == 1 and not any(_needs_process_group(spec) for spec in specs):
        return [_run_one(spec, 1) for spec in specs]
    import torch.multiprocessing as mp

    # The rendezvous store lives in this process on a port the OS picked, so concurrent tests never race for a
    # "free" port; the workers join it as clients.
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=PG_TIMEOUT_S)
    )
    with tempfile.TemporaryDirectory(prefix="loom-harness-") as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.start_processes(_worker, args=(specs, store.port, out), nprocs=world_size, start_method="spawn", join=True)
        saved = torch.load(out, weights_only=False)  # written by this test's own workers
    del store
    return saved


def _needs_process_group(spec: RunSpec) -> bool:
    """FSDP on one process (parallel=fsdp, dp_shard=-1) runs on a 1-rank mesh, so it needs a process group."""
    from parallel import ParallelDims

    return ParallelDims.from_config(spec.parallel_config(), spec.world_size).needs_mesh


def _run_one(spec: RunSpec, world_size: int):
    try:
        return train(spec, world_size=world_size)
    except Exception:  # reported per spec; the test of that spec fails with this traceback
        return traceback.format_exc()


def spawn_gloo_workers(worker, nprocs: int, out: str):
    """Run `worker(rank, nprocs, port, out)` on `nprocs` spawned processes (each joins a gloo group at
    tcp://127.0.0.1:port) and return what rank 0 published to `out` with `save_from_rank_0`."""
    import torch.multiprocessing as mp

    mp.start_processes(worker, args=(nprocs, free_port(), out), nprocs=nprocs, start_method="spawn", join=True)
    return torch.load(out)


def save_from_rank_0(obj, out: str, rank: int) -> None:
    """Rank 0 publishes `obj` for `spawn_gloo_workers` (written aside, then renamed into place); all ranks wait."""
    if rank == 0:
        torch.save(obj, out + ".tmp")
        os.replace(out + ".tmp", out)
    dist.barrier()


def free_port() -> int:
    """A currently free TCP port (for tests that start their own processes; racy if another test grabs it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, specs: list, port: int, out: str) -> None:
    world_size = specs[0].world_size
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        LOOM_DEEPSPEED_SHM_COMM="0",
    )
    timeout = timedelta(seconds=PG_TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout, store=store)
    try:
        results = []
        for spec in specs:
            results.append(_run_one(spec, world_size))
            gc.collect()
        if rank == 0:
            tmp = out + ".tmp"
            torch.save(results, tmp)
            os.replace(tmp, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- planned runs
_PLANNED: list[RunSpec] = []
_RESULTS: dict[str, Any] = {}


def plan(spec: RunSpec) -> RunSpec:
    """Declare at import time (module level or in parametrize) a spec a test will ask `planned_result` for, so
    every planned spec of one world size and engine runs in a single spawn."""
    if repr(spec) not in {repr(s) for s in _PLANNED}:
        _PLANNED.append(spec)
    return spec


def planned_result(spec: RunSpec) -> RunResult:
    """The result of a planned spec, running (once) the whole batch of planned specs it belongs to."""
    key = repr(spec)
    if key not in _RESULTS:
        group = _group(spec)
        batch = [s for s in _PLANNED if _group(s) == group and repr(s) not in _RESULTS]
        if key not in {repr(s) for s in batch}:
            batch.append(spec)
        for s, result in zip(batch, run_layouts(batch)):
            _RESULTS[repr(s)] = result
    result = _RESULTS[key]
    if isinstance(result, str):
        raise AssertionError(f"layout {spec.layout} with {spec.overrides} failed:\n{result}")
    return result


def _group(spec: RunSpec) -> tuple:
    return spec.world_size, spec.parallel_config().engine


# ---------------------------------------------------------------------------------------------- assertions
def assert_runs_match(got: RunResult, ref: RunResult, *, rtol: float):
    """Losses within `rtol` (relative) at every step; every final parameter within `rtol` relative error in norm,
    ||got - ref|| / ||ref||. (Elementwise relative error is meaningless for the odd entry whose gradient is ~0:
    Adam's update m / sqrt(v) there amplifies the last-bit differences that any change of reduction order makes.)"""
    assert len(got.losses) == len(ref.losses), (got.losses, ref.losses)
    torch.testing.assert_close(
        torch.tensor(got.losses, dtype=torch.float64),
        torch.tensor(ref.losses, dtype=torch.float64),
        rtol=rtol,
        atol=0.0,
        msg=lambda m: f"per-step losses differ: {got.losses} vs {ref.losses}\n{m}",
    )
    assert set(got.params) == set(ref.params), f"parameter names differ: {sorted(set(got.params) ^ set(ref.params))}"
    for name, expected in ref.params.items():
        actual = got.params[name].double()
        assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        error = (actual - expected.double()).norm() / expected.double().norm().clamp(min=1e-12)
        assert error <= rtol, f"parameter {name} differs after the last step: relative error {error:.3e} > {rtol}"
