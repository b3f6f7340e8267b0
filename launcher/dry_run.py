"""`python -m launcher.dry_run [cluster.nodes=N cluster.gpus_per_node=G cluster.gpu_memory_gb=M] <training
overrides>`: the job `launcher.submit` would start, built at full world size on this machine, without Slurm.

The config is composed and validated as `launcher.submit` does (world size = cluster.nodes x ranks per node).
Then, for the rank that holds the most of each pipeline stage (the stage's rank 0: FSDP pads the last shards), one
process joins a fake process group of the full world size, builds the real model on the meta device and lays it
out with `parallel.parallelize`, and counts the bytes of its local shards, of their gradients and of training's
AdamW state after one step over them (parallel/footprint.py). Those processes run side by side, as many as
this machine has CPUs. Beside each built figure stands the estimate's (parallel/estimate.py) for the same stage;
what a meta build cannot measure - the unsharded layers FSDP/ZeRO-3 gathers for compute, and activations - comes
from the estimate. With cluster.gpu_memory_gb set, a rank whose total exceeds it is refused (exit 2), naming the
figures and what to change; `launcher.submit` runs the same check before sbatch.

DeepSpeed (engine=deepspeed) cannot be built on a fake process group; its ZeRO partitions are sized from the
parameter count of the model built on the meta device (parallel/footprint.py's zero_state_bytes). DDP, which
shards nothing and cannot wrap meta parameters, is counted on the plain model; parallel.fsdp_cpu_offload is built
without the offload (FSDP refuses it off-GPU; it moves the shards, not their shapes) and reported as host memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from cluster.config import ClusterConfig, local_cpus
from cluster.slurm import REPO
from launcher.job_config import HELP_FLAGS, cluster_config, compose, validate_on_allocation
from launcher.validation import ConfigError, RunPlan
from parallel.estimate import GIB, STATE_KINDS

INSPECT_FLAG = "--inspect-rank"
WORKER_TIMEOUT_S = 900
USAGE = (
    "usage: python -m launcher.dry_run [cluster.nodes=N cluster.gpus_per_node=G cluster.gpu_memory_gb=M] "
    "[training overrides ...]"
)


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class DryRunPlan:
    plan: RunPlan
    cluster: ClusterConfig
    ranks_per_node: int

    @property
    def world_size(self) -> int:
        return self.cluster.nodes * self.ranks_per_node


def plan_dry_run(overrides: list[str]) -> DryRunPlan:
    """The training config of `overrides` validated on the job's world size (ConfigError names the key)."""
    cfg = compose(overrides)
    cluster = cluster_config(cfg)
    return DryRunPlan(validate_on_allocation(cfg, cluster), cluster, cluster.training_ranks_per_node())


def training_run(plan: RunPlan):
    """The estimate's view (parallel.estimate.TrainingRun) of a validated plan."""
    from parallel.estimate import TrainingRun

    t = plan.cfg.trainer
    return TrainingRun(
        model=plan.cfg.model,
        dims=plan.dims,
        seq_len=plan.cfg.data.seq_len,
        micro_batch_size=t.micro_batch_size,
        global_batch=plan.global_batch,
        precision=t.precision,
        optimizer=plan.cfg.optim.name,
    )


# ---------------------------------------------------------------------------------------------------- one rank
def inspect_rank(plan: RunPlan, rank: int) -> dict[str, Any]:
    """Build `rank`'s part of the laid-out model on the meta device and count its state (one call per process:
    the fake process group is this process's)."""
    import torch

    import model as model_lib
    from parallel.footprint import zero_state_bytes

    cfg, dims = plan.cfg, plan.dims
    start = time.perf_counter()
    if cfg.parallel.engine == "deepspeed":
        from model.dtypes import dtype_bytes

        with torch.device("meta"):
            model = model_lib.build(cfg.model)
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        weight_bytes = dtype_bytes(cfg.trainer.precision, "trainer.precision")
        state = zero_state_bytes(total, dims.dp_shard, cfg.parallel.zero_stage, weight_bytes)
        return {"rank": rank, "stages": [0], "state": state.to_dict(), "seconds": time.perf_counter() - start}

    from parallel.api import parallelize
    from parallel.footprint import init_fake_process_group, local_shards, measured_state_bytes
    from parallel.stage_plan import stage_ids_for_rank

    if dims.cfg.fsdp_cpu_offload:  # where the shards live, not their shapes: apply_fsdp refuses it off-GPU
        dims = replace(dims, cfg=replace(dims.cfg, fsdp_cpu_offload=False))
    init_fake_process_group(rank, dims.world_size)
    dims.build_mesh("cpu")
    with torch.device("meta"):
        model = model_lib.build(cfg.model)
    # DDP shards nothing (every rank holds the plain model) and cannot wrap meta parameters (it reads their values)
    laid_out = model if dims.ddp_enabled else parallelize(model, dims)
    parts = getattr(laid_out, "stages", [laid_out])
    shards = local_shards(parts)
    optimizers = shard_optimizers(parts, shards, cfg.optim)  # training's optimizers, on this rank's local shards
    for optimizer in optimizers:
        optimizer.step()
    totals = measured_state_bytes(shards, optimizers).to_dict()
    stages = [0]
    if dims.pp > 1:
        pp_rank = dims.submesh("pp").get_local_rank()
        stages = stage_ids_for_rank(pp_rank, dims.pp, cfg.parallel.pp_stages_per_rank, cfg.parallel.pp_schedule)
    return {"rank": rank, "stages": list(stages), "state": totals, "seconds": time.perf_counter() - start}


def shard_optimizers(parts: list, shards: Any, optim: Any) -> list:
    """Training's optimizers over `shards` (parallel.footprint.local_shards of `parts`, one per unique trainable
    parameter in order): AdamW; for optim=muon, Muon over the shards of the matrices launcher.optim picks for Muon
    and AdamW over the rest, so the measured state is training's."""
    import torch

    from launcher.optim import build_optimizer, muon_parameters

    if optim.name != "muon":
        return [build_optimizer(shards, optim, "cpu")]
    from launcher.muon import Muon

    matrices = {id(p) for part in parts for p in muon_parameters(part, optim.muon.adamw_params)}
    originals = list({id(p): p for part in parts for p in part.parameters() if p.requires_grad}.values())
    muon = [shard for shard, p in zip(shards, originals, strict=True) if id(p) in matrices]
    rest = [shard for shard, p in zip(shards, originals, strict=True) if id(p) not in matrices]
    built = [Muon(muon, lr=optim.lr, weight_decay=optim.weight_decay)] if muon else []
    return built + ([torch.optim.AdamW(rest, lr=optim.lr)] if rest else [])


def _run_worker(overrides: list[str], rank: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    result = subprocess.run(
        [sys.executable, "-m", "launcher.dry_run", INSPECT_FLAG, str(rank), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"building rank {rank} failed (exit {result.returncode}):\n{tail}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------------- the report
@dataclass
class RankReport:
    rank: int
    stages: tuple[int, ...]  # the pipeline stages this rank holds (several under interleaved schedules)
    layers: Optional[tuple[int, int]]  # first and last layer of the stage (None: not known to the estimate)
    built: dict[str, int]  # parameters, weights, gradients, optimizer (parallel.footprint.StateBytes)
    estimated: Optional[dict[str, float]]  # the estimate's weights, gradients, optimizer, gathered, activations
    on_host: frozenset[str] = field(default_factory=frozenset)

    def gpu_total(self) -> float:
        """Built state kept on the GPU plus the estimate's gathered layers and activations."""
        state = sum(self.built[k] for k in STATE_KINDS if k not in self.on_host)
        if self.estimated is None:
            return float(state)
        return state + self.estimated["gathered"] + self.estimated["activations"]

    def estimated_total(self) -> Optional[float]:
        """The estimate's total for the stage (parallel.estimate.stage_memory's)."""
        if self.estimated is None:
            return None
        e = self.estimated
        return sum(e[k] for k in STATE_KINDS if k not in self.on_host) + (e["gathered"] + e["activations"])


@dataclass
class DryRunReport:
    plan: DryRunPlan
    ranks: list[RankReport]
    seconds: float
    estimate_note: Optional[str] = None  # why the estimate has no figures for this layout

    def largest(self) -> RankReport:
        return max(self.ranks, key=lambda r: r.gpu_total())

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.plan.world_size,
            "seconds": self.seconds,
            "estimate_note": self.estimate_note,
            "ranks": [
                {
                    "rank": r.rank,
                    "stages": list(r.stages),
                    "layers": r.layers,
                    "built": r.built,
                    "estimated": r.estimated,
                    "on_host": sorted(r.on_host),
                    "gpu_total": r.gpu_total(),
                }
                for r in self.ranks
            ],
        }


def dry_run(overrides: list[str], plan: Optional[DryRunPlan] = None) -> DryRunReport:
    """Build each pipeline stage's rank 0 of the job `overrides` describes, in parallel processes, and put the
    estimate's figures beside the built ones."""
    from parallel.estimate import on_host, stage_figures, stage_layers
    from parallel.footprint import stage_first_ranks

    plan = plan or plan_dry_run(overrides)
    dims = plan.plan.dims
    start = time.perf_counter()
    ranks = stage_first_ranks(dims.pp, dims.world_size)
    with ThreadPoolExecutor(max_workers=max(1, min(len(ranks), local_cpus()))) as pool:
        results = list(pool.map(lambda r: _run_worker(overrides, r), ranks))
    run = training_run(plan.plan)
    note, layers = None, None
    try:
        layers = stage_layers(run)
        estimates = [stage_figures(run, s) for s in range(len(layers))]
    except ValueError as exc:  # the estimate sizes one stage per rank only
        note, estimates = str(exc), None
    reports = []
    for result in results:
        stages = tuple(result["stages"])
        stage = stages[0]
        single = estimates is not None and len(stages) == 1
        reports.append(
            RankReport(
                rank=result["rank"],
                stages=stages,
                layers=(layers[stage].start, layers[stage].stop - 1) if single else None,
                built=result["state"],
                estimated=estimates[stage] if single else None,
                on_host=on_host(run),
            )
        )
    return DryRunReport(plan, reports, time.perf_counter() - start, note)


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def format_report(report: DryRunReport) -> str:
    """The per-rank table: built / estimated GiB of each kind of state, the estimate's gathered layers and
    activations, the total the GPU needs."""
    plan, dims = report.plan, report.plan.plan.dims
    model_name = plan.plan.cfg.model.name
    lines = [
        f"dry run: {model_name} on {plan.world_size} ranks ({plan.cluster.nodes} node(s) x {plan.ranks_per_node}): "
        f"pp {dims.pp} x dp {dims.dp_degree} x tp {dims.tp} x cp {dims.cp} (ep {dims.ep}), "
        f"engine {dims.cfg.engine}; each stage's rank 0 built on the meta device over a fake process group "
        f"in {report.seconds:.1f} s",
    ]
    header = ("rank", "stage", "layers", "params/rank", "weights", "gradients", "optimizer", "gathered*")
    header += ("activations*", "total")
    pair = "built / est GiB"
    rows = [header, ("", "", "", "", pair, pair, pair, "GiB", "GiB", pair)]
    for r in report.ranks:
        e = r.estimated or {}
        rows.append(
            (
                str(r.rank),
                ",".join(map(str, r.stages)),
                "-" if r.layers is None else f"{r.layers[0]}-{r.layers[1]}",
                f"{r.built['parameters']:,}",
                *(f"{_gib(r.built[k])} / {_gib(e.get(k))}" for k in STATE_KINDS),
                _gib(e.get("gathered")),
                _gib(e.get("activations")),
                f"{_gib(r.gpu_total())} / {_gib(r.estimated_total())}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("* from the estimate (parallel/estimate.py): a meta-device build does not measure them")
    if report.ranks and report.ranks[0].on_host:
        lines.append(f"offloaded to host memory (not in total): {', '.join(sorted(report.ranks[0].on_host))}")
    if report.estimate_note:
        lines.append(f"no estimate for this layout: {report.estimate_note} (total counts the built state only)")
    limit = plan.cluster.gpu_memory_gb
    if limit is not None:
        worst = report.largest()
        verdict = "fits" if worst.gpu_total() <= limit * GIB else "DOES NOT FIT"
        lines.append(
            f"cluster.gpu_memory_gb={limit:g}: largest rank {worst.rank} needs {_gib(worst.gpu_total())} GiB: {verdict}"
        )
    return "\n".join(lines)


def check_fits(report: DryRunReport) -> None:
    """ConfigError when a rank's total exceeds cluster.gpu_memory_gb (no limit set: nothing to check)."""
    limit = report.plan.cluster.gpu_memory_gb
    if limit is None:
        return
    worst = report.largest()
    if worst.gpu_total() <= limit * GIB:
        return
    e = worst.estimated or {}
    parts = [f"{k} {_gib(worst.built[k])}" for k in STATE_KINDS if k not in worst.on_host]
    parts += [f"{k} {_gib(e[k])}" for k in ("gathered", "activations") if k in e]
    raise ConfigError(
        f"rank {worst.rank} (pipeline stage {','.join(map(str, worst.stages))}) needs {_gib(worst.gpu_total())} GiB "
        f"({' + '.join(parts)} GiB) but cluster.gpu_memory_gb={limit:g}: shard more (raise parallel.dp_shard, tp, "
        f"pp or ep), lower trainer.micro_batch_size or data.seq_len, set parallel.ac_mode=selective or full, or "
        f"use GPUs with more memory"
    )


# ---------------------------------------------------------------------------------------------------- command
def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
        return 0
    if argv and argv[0] == INSPECT_FLAG:  # a worker: one rank, one JSON line on stdout
        rank, overrides = int(argv[1]), argv[2:]
        print(json.dumps(inspect_rank(plan_dry_run(overrides).plan, rank)), flush=True)
        return 0
    as_json = "--json" in argv
    overrides = [a for a in argv if a != "--json"]
    unknown = [a for a in overrides if a.startswith("--")]
    if unknown:
        print(f"unknown option(s) {unknown}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        plan = plan_dry_run(overrides)
        report = dry_run(overrides, plan)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as exc:
        print(f"dry run failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - Hydra's own errors (unknown key, bad group) name the key already
        print(f"config error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report), flush=True)
    try:
        check_fits(report)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
