"""`python -m launcher.submit [--dry-run] [cluster=<name>] cluster.nodes=N cluster.gpus_per_node=G ...
<training overrides>`: one Slurm job from the same Hydra config `launcher.train` reads.

It composes the training config with the `cluster` group, checks that the layout and batch plan fit
nodes x ranks per node with the launcher's own validation (the same `validate` a rank runs at start, so a
layout that cannot run is refused here, before sbatch, not in the job log), renders slurm/train.sbatch with
#SBATCH lines and LOOM_* settings from the config above the template's shared body, writes it into the run
directory and submits it with `sbatch --parsable`. `--dry-run` prints the script and submits nothing.

`--dry-run` also builds the job's model at full world size on this machine (launcher/dry_run.py: each pipeline
stage's rank 0 laid out on the meta device over a fake process group) and prints, on stderr so stdout stays the
script, each rank's built bytes of weights, gradients and optimizer state beside the estimate's. With
cluster.gpu_memory_gb set the same build runs before any submission, and a layout whose largest rank needs more is
refused (exit 2). `--no-build` skips the build (and so the memory check).

The run directory is `trainer.run_dir` if given, else `<working directory>/outputs/<trainer.name>`: stable
across requeues and resubmissions of the same job name, so both resume from its newest checkpoint. Every path
in the script is absolute and the job runs in the submitting directory, so it can be submitted from anywhere.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cluster.config import ClusterConfig
from cluster.slurm import REPO, SLURM_DIR, job_python, resource_options
from launcher.dry_run import check_fits, dry_run, format_report
from launcher.job_config import HELP_FLAGS, cluster_config, compose, validate_on_allocation
from launcher.validation import ConfigError

TEMPLATE = SLURM_DIR / "train.sbatch"
BODY_MARKER = "# ---- shared body:"
SCRIPT_NAME = "slurm_job.sbatch"
USAGE = (
    "usage: python -m launcher.submit [--dry-run] [--no-build] [cluster=<name>] [cluster.nodes=N "
    "cluster.gpus_per_node=G cluster.cpus_per_task= cluster.partition= cluster.account= cluster.qos= cluster.time= "
    "cluster.mem= cluster.gpu_memory_gb=] [training overrides ...]"
)


@dataclass
class TrainJob:
    script: str  # the rendered sbatch script
    run_dir: Path
    name: str  # Slurm job name (trainer.name)
    nodes: int
    ranks_per_node: int
    gpu_memory_gb: Optional[float] = None  # cluster.gpu_memory_gb: submit checks the built job against it

    def log_path(self, job_id: str) -> Path:
        return self.run_dir / f"slurm-{job_id}.out"


def template_body() -> str:
    """slurm/train.sbatch from its shared-body marker line on: what every rendered script runs."""
    text = TEMPLATE.read_text()
    start = text.find(BODY_MARKER)
    if start < 0:
        raise RuntimeError(f"{TEMPLATE}: the line starting with {BODY_MARKER!r} is missing")
    return text[start:]


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def plan_job(overrides: list[str], cwd: Optional[Path] = None) -> TrainJob:
    """Compose, validate against the allocation and render; raises ConfigError naming the key and the fix."""
    cwd = Path(cwd or os.getcwd()).resolve()
    cfg = compose(overrides)
    cluster = cluster_config(cfg)
    explicit = [a for a in overrides if _override_key(a) == "trainer.run_dir"]
    run_dir = (cwd / cfg.trainer.run_dir) if explicit else (cwd / "outputs" / cfg.trainer.name)
    run_dir = Path(os.path.normpath(run_dir))
    cfg.trainer.run_dir = str(run_dir)

    ranks = cluster.training_ranks_per_node()
    validate_on_allocation(cfg, cluster)
    job_overrides = [a for a in overrides if _override_key(a) != "trainer.run_dir"]
    script = render_script(
        cluster, name=cfg.trainer.name, run_dir=run_dir, ranks_per_node=ranks, cwd=cwd, overrides=job_overrides
    )
    return TrainJob(
        script=script,
        run_dir=run_dir,
        name=cfg.trainer.name,
        nodes=cluster.nodes,
        ranks_per_node=ranks,
        gpu_memory_gb=cluster.gpu_memory_gb,
    )


def render_script(
    cluster: ClusterConfig, *, name: str, run_dir: Path, ranks_per_node: int, cwd: Path, overrides: list[str]
) -> str:
    """#SBATCH lines and LOOM_* settings from the config, the training overrides, then the template's body."""
    options = [f"--job-name={name}", f"--nodes={cluster.nodes}", "--ntasks-per-node=1"]
    if cluster.uses_gpus:
        options.append(f"--gpus-per-node={cluster.gpus_per_node}")
    options += resource_options(cluster, cluster.training_cpus_per_task())
    options += [
        f"--signal=B:USR1@{cluster.signal_lead_s}",
        "--requeue",
        "--open-mode=append",
        f"--chdir={cwd}",
        f"--output={run_dir}/slurm-%j.out",
    ]
    options += [str(a) for a in cluster.sbatch_args]
    settings = {
        "LOOM_REPO": str(REPO),
        "LOOM_PYTHON": job_python(cluster),
        "LOOM_RUN_DIR": str(run_dir),
        "LOOM_RANKS_PER_NODE": str(ranks_per_node),
        "LOOM_MAX_REQUEUES": str(cluster.max_requeues),
        **{str(k): str(v) for k, v in cluster.env.items()},
    }
    lines = [
        "#!/bin/bash",
        f"# Rendered by `python -m launcher.submit` (cluster={cluster.name}): {cluster.nodes} node(s) x "
        f"{ranks_per_node} rank(s) per node.",
        "# Resubmit with `sbatch <this file>`: the run resumes from its run directory.",
        *(f"#SBATCH {option}" for option in options),
        *(f"export {key}={shlex.quote(value)}" for key, value in settings.items()),
        "set -- " + " ".join(shlex.quote(a) for a in overrides) + (" " if overrides else "") + '"$@"',
    ]
    return "\n".join(lines) + "\n" + template_body()


def submit(job: TrainJob, cwd: Path) -> str:
    """Write the script into the run dir (atomically) and sbatch it; returns the job id."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    path = job.run_dir / SCRIPT_NAME
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(job.script)
    os.replace(tmp, path)
    result = subprocess.run(["sbatch", "--parsable", str(path)], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch {path} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def _check_memory(overrides: list[str]) -> int:
    """Build the job at full world size (launcher/dry_run.py), print its per-rank table on stderr and refuse a
    layout that exceeds cluster.gpu_memory_gb: 0 when it fits (or no limit is set), 2 refused, 1 build failed."""
    try:
        report = dry_run(overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    except RuntimeError as exc:
        print(f"dry run failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(format_report(report), file=sys.stderr, flush=True)
    try:
        check_fits(report)
    except ConfigError as exc:
        print(f"config error: {exc} [nothing was submitted]", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv):
        print(__doc__.split("\n\n")[0] + "\n\n" + USAGE)
        return 0
    dry_run, no_build = "--dry-run" in argv, "--no-build" in argv
    overrides = [a for a in argv if a not in ("--dry-run", "--no-build")]
    unknown = [a for a in overrides if a.startswith("--")]
    if unknown:
        print(f"unknown option(s) {unknown}\n{USAGE}", file=sys.stderr)
        return 2
    cwd = Path.cwd()
    try:
        job = plan_job(overrides, cwd)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - Hydra's own errors (unknown key, bad group) name the key already
        print(f"config error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    if dry_run:
        sys.stdout.write(job.script)
        sys.stdout.flush()
    if not no_build and (dry_run or job.gpu_memory_gb is not None):
        rc = _check_memory(overrides)
        if rc != 0 or dry_run:
            return rc
    elif dry_run:
        return 0
    resumes = any((job.run_dir / "checkpoints").glob("step_*"))
    try:
        job_id = submit(job, cwd)
    except (RuntimeError, OSError) as exc:
        print(f"submit failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"submitted job {job_id} ({job.name}: {job.nodes} node(s) x {job.ranks_per_node} rank(s))")
    print(f"run dir: {job.run_dir}" + (" (exists: the job resumes from its newest checkpoint)" if resumes else ""))
    print(f"log: {job.log_path(job_id)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
