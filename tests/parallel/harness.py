"""Run a few training steps of a tiny model under any parallel layout and under a single process, so a layout test
is "same losses, same final weights" in a few lines.

Every run builds the model on CPU from the same seed (so all ranks and the reference start from identical
weights), then parallelizes it, and trains with AdamW on the same global batch each step; each data-parallel rank
takes its rows of that batch. Distributed runs are `torch.multiprocessing` spawns over gloo with a short process
group timeout; rank 0 writes the per-step losses and the full (unsharded) parameters to a file the parent reads.

A layout whose training step is not "forward, backward, optimizer step on one module" (pipeline schedules, context
parallel sharding of the sequence, DeepSpeed engines) plugs in a `Strategy` subclass (a module-level class, so
it pickles into the spawned processes) and overrides `setup`, `train_step` or `full_state_dict`.

Starting processes and importing torch costs more than training the tiny model, so `run_layouts` runs several
specs in one spawn, and tests `plan()` their specs at import time so `planned_result()` runs every planned spec
of one world size and engine together.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import socket
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
    merged = OmegaConf.merge(OmegaConf.structured(ParallelConfig), OmegaConf.load(path), overrides)
    return OmegaConf.to_object(merged)


def tiny_model_config(**overrides: Any):
    """A 2-layer GQA model that every layout here can split (heads, KV heads, FFN and vocab divisible by 4)."""
    from model.config import ModelConfig

    base = dict(
        name="tiny-test", vocab_size=128, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
        max_seq_len=64, init_std=0.02,
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
    load_from: Optional[str] = None  # DCP checkpoint directory to resume from (model + optimizer)
    save_to: Optional[str] = None  # DCP checkpoint directory to write after the last step
    start_step: int = 0  # step index of the first batch (so a resumed run sees the batches the reference saw)

    def model_config(self):
        return tiny_model_config(**self.model_overrides)

    def parallel_config(self):
        return load_parallel_config(self.layout, **self.overrides)


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
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def build_model(spec: RunSpec):
    """Meta-device construction, then CPU materialisation and init from the seed: the same weights everywhere."""
    import model as model_pkg

    cfg = spec.model_config()
    with torch.device("meta"):
        net = model_pkg.build(cfg)
    net.to_empty(device="cpu")
    torch.manual_seed(spec.seed)
    net.init_weights()
    return net


# ---------------------------------------------------------------------------------------------- strategies
class Strategy:
    """The default training step: parallelize(), AdamW, forward/backward/step, DCP for checkpoints."""

    def setup(self, spec: RunSpec, net, dims, pcfg, mesh) -> Any:
        from parallel import parallelize

        self.dims, self.pcfg, self.mesh, self.model_cfg = dims, pcfg, mesh, spec.model_config()
        self.model = parallelize(net, dims, pcfg, model_cfg=self.model_cfg, mesh=mesh)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay,
            foreach=False,
        )
        return self.model

    def local_batch(self, tokens: torch.Tensor, labels: torch.Tensor):
        dp, rank = self.dims.dp_degree, self.dims.dp_rank(self.mesh)
        rows = tokens.shape[0] // dp
        return tokens[rank * rows : (rank + 1) * rows], labels[rank * rows : (rank + 1) * rows]

    def train_step(self, spec: RunSpec, tokens: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step; returns the loss averaged over data-parallel ranks (the global-batch loss)."""
        from parallel import compute_loss, loss_context, scalar_loss

        tokens, labels = self.local_batch(tokens, labels)
        self.optimizer.zero_grad(set_to_none=True)
        with loss_context(self.dims, self.pcfg):
            loss = compute_loss(self.model, tokens, labels, self.dims, self.pcfg, self.model_cfg)
            loss.backward()
        if spec.grad_clip > 0:
            from parallel import clip_grad_norm_

            clip_grad_norm_(self.model.parameters(), spec.grad_clip)
        self.optimizer.step()
        return self.average_over_dp(scalar_loss(loss))

    def average_over_dp(self, value: float) -> float:
        if self.mesh is None or self.dims.dp_degree * self.dims.cp == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.dims.submesh(self.mesh, "dp_cp").get_group())
        return float(t) / (self.dims.dp_degree * self.dims.cp)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unsharded parameters on every rank (a collective: every rank must call it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().clone() for k, v in sd.items()}

    def save(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)

    def load(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


class ZeroStrategy(Strategy):
    """DeepSpeed ZeRO: the engine owns the optimizer and the backward."""

    def setup(self, spec: RunSpec, net, dims, pcfg, mesh) -> Any:
        import deepspeed.ops

        from parallel.zero import OptimizerSettings, initialize_zero

        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (30-170 s here) when it can; it
        # only speeds up CPU collectives, so tests mark it unavailable and DeepSpeed uses plain gloo.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.dims, self.pcfg, self.mesh, self.model_cfg = dims, pcfg, mesh, spec.model_config()
        settings = OptimizerSettings(
            lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay, grad_clip=spec.grad_clip
        )
        self.engine = initialize_zero(
            net, pcfg, dims, micro_batch_size=spec.global_batch // dims.dp_degree, grad_accum_steps=1,
            optimizer=settings, precision="float32",
        )
        return self.engine

    def train_step(self, spec: RunSpec, tokens: torch.Tensor, labels: torch.Tensor) -> float:
        tokens, labels = self.local_batch(tokens, labels)
        loss = self.engine(tokens, labels)
        self.engine.backward(loss)
        self.engine.step()
        return self.average_over_dp(float(loss.detach()))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        from parallel.zero import full_model_state_dict

        return full_model_state_dict(self.engine)


def default_strategy(pcfg) -> Strategy:
    return ZeroStrategy() if pcfg.engine == "deepspeed" else Strategy()


# ---------------------------------------------------------------------------------------------- running
def train(spec: RunSpec, strategy: Optional[Strategy] = None, *, world_size: int = 1) -> RunResult:
    """Build, parallelize and train in this process (rank `dist.get_rank()` of `world_size`, or alone)."""
    from parallel import ParallelDims

    torch.manual_seed(spec.seed)
    pcfg = spec.parallel_config()
    dims = ParallelDims.from_config(pcfg, world_size, spec.model_config(), spec.seq_len)
    mesh = dims.build_mesh("cpu")
    strategy = strategy if strategy is not None else default_strategy(pcfg)
    strategy.setup(spec, build_model(spec), dims, pcfg, mesh)
    if spec.load_from:
        strategy.load(spec.load_from)
    losses = []
    for step in range(spec.start_step, spec.start_step + spec.steps):
        tokens, labels = global_batch(spec, step)
        losses.append(strategy.train_step(spec, tokens, labels))
    if spec.save_to:
        strategy.save(spec.save_to)
    rank_info = [{"dp_rank": 0, "tp_rank": 0, "mesh_dims": {}}]
    if mesh is not None:
        rank_info = [None] * world_size
        dist.all_gather_object(rank_info, rank_info_local(dims, mesh))
    return RunResult(losses=losses, params=strategy.full_state_dict(), rank_info=rank_info)


def rank_info_local(dims, mesh) -> dict:
    return {
        "dp_rank": dims.dp_rank(mesh),
        "tp_rank": mesh["tp"].get_local_rank(),
        "mesh_dims": dict(zip(mesh.mesh_dim_names, mesh.shape)),
    }


def run_reference(spec: RunSpec) -> RunResult:
    """The single-process run the layouts are compared against: the plain model, no parallelize()."""
    ref = dataclasses.replace(spec, layout="single", world_size=1, overrides={}, load_from=None, save_to=None)
    return train(ref, Strategy())


def run_layout(spec: RunSpec, strategy: Optional[Strategy] = None) -> RunResult:
    """`spec` under its layout in `spec.world_size` spawned gloo processes (in-process for one process that needs
    no process group)."""
    result = run_layouts([spec], [strategy])[0]
    if isinstance(result, str):
        raise AssertionError(f"layout {spec.layout} failed:\n{result}")
    return result


def run_layouts(specs: list[RunSpec], strategies: Optional[list] = None) -> list:
    """Several specs (same world size) one after another in ONE set of spawned processes, since starting
    processes and importing torch costs more than training the tiny model. Returns, per spec, its RunResult or
    the formatted traceback of its failure, so one broken layout does not hide the others' results."""
    if not specs:
        return []
    world_size = specs[0].world_size
    if any(s.world_size != world_size for s in specs):
        raise ValueError(f"run_layouts needs one world size, got {[s.world_size for s in specs]}")
    strategies = strategies if strategies is not None else [None] * len(specs)
    if world_size == 1 and not any(_needs_process_group(spec) for spec in specs):
        return [_run_one(spec, strategy, 1) for spec, strategy in zip(specs, strategies)]
    import torch.multiprocessing as mp

    # The rendezvous store lives in this process on a port the OS picked, so concurrent tests never race for a
    # "free" port; the workers join it as clients.
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=PG_TIMEOUT_S)
    )
    with tempfile.TemporaryDirectory(prefix="loom-harness-") as tmp:
        out = os.path.join(tmp, "results.pt")
        mp.start_processes(
            _worker, args=(specs, strategies, store.port, out), nprocs=world_size, start_method="spawn", join=True
        )
        saved = torch.load(out, weights_only=False)
    del store
    return saved


def _needs_process_group(spec: RunSpec) -> bool:
    """FSDP on one process (parallel=fsdp, dp_shard=-1) runs on a 1-rank mesh, so it needs a process group."""
    from parallel import ParallelDims

    return ParallelDims.from_config(spec.parallel_config(), spec.world_size).needs_mesh


def _run_one(spec: RunSpec, strategy: Optional[Strategy], world_size: int):
    try:
        return train(spec, strategy, world_size=world_size)
    except Exception:  # reported per spec; the test of that spec fails with this traceback
        return traceback.format_exc()


def free_port() -> int:
    """A currently free TCP port (for tests that start their own processes; racy if another test grabs it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, specs: list, strategies: list, port: int, out: str) -> None:
    world_size = specs[0].world_size
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )
    timeout = timedelta(seconds=PG_TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timeout)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout, store=store)
    try:
        results = []
        for spec, strategy in zip(specs, strategies):
            results.append(_run_one(spec, strategy, world_size))
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
        torch.tensor(got.losses, dtype=torch.float64), torch.tensor(ref.losses, dtype=torch.float64),
        rtol=rtol, atol=0.0, msg=lambda m: f"per-step losses differ: {got.losses} vs {ref.losses}\n{m}",
    )
    assert set(got.params) == set(ref.params), f"parameter names differ: {sorted(set(got.params) ^ set(ref.params))}"
    for name, expected in ref.params.items():
        actual = got.params[name].double()
        assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        error = (actual - expected.double()).norm() / expected.double().norm().clamp(min=1e-12)
        assert error <= rtol, f"parameter {name} differs after the last step: relative error {error:.3e} > {rtol}"
