"""Training metrics and where they go, kept out of the loop (launcher/callbacks/metrics_logging.py drives them).

One dict per logged step goes to `MetricsLogger.log`, which fans it out to sinks: the console (through
`logging`), a tqdm progress bar, `metrics.jsonl` in the run dir, wandb, and at the end a PNG plot. Only rank 0
gets sinks. `SpeedMeter` turns wall time between log steps into tokens/s, MFU and peak memory; MFU is None (JSON
null) when the device's peak FLOP/s is unknown, e.g. on CPU, rather than a made-up number.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss_lr.png"


class MetricsSink(Protocol):
    def log(self, step: int, metrics: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ConsoleSink:
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        log.info("step %d | %s", step, " | ".join(f"{k} {_format(v)}" for k, v in metrics.items() if k != "step"))

    def close(self) -> None:
        pass


class ProgressBarSink:
    """A tqdm bar advanced every step (no host sync: it only counts) and annotated at log steps."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, leave=True)

    def advance(self, step: int) -> None:
        self.bar.update(step - self.bar.n)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        shown = {k: _format(metrics[k]) for k in ("loss", "lr", "tokens_per_sec", "val_loss") if k in metrics}
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


class JsonlSink:
    """One JSON object per logged step, appended and flushed, so a killed run keeps what it logged."""

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        truncate_after(self.path, resume_step)
        self.file = open(self.path, "a")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def truncate_after(path: Path, step: int) -> None:
    """Drop records past `step` (written by a run that died after its last checkpoint) so a resumed run's file
    reads as one uninterrupted run. Rewritten atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class WandbSink:
    """wandb run in <run_dir>/wandb: online when WANDB_API_KEY is set, offline otherwise; logging.wandb.mode
    (online | offline | disabled) overrides.

    One run per run directory: its id is kept in <run_dir>/wandb_run_id, so a resumed or requeued job continues
    the same run (a run started from step 0 gets a new one). The last step sent is kept beside it and steps up to
    it are not sent again: a job that died after logging past its last checkpoint would otherwise repeat them, and
    wandb history only moves forward. Under Slurm the run's config carries the job id, node count and restart
    count (`slurm.*`), so every requeue shows which job wrote it."""

    def __init__(
        self, cfg: Any, run_dir: Path, config: dict[str, Any], run_name: str, resume_step: Optional[int] = None
    ) -> None:
        mode = cfg.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        wandb_dir = Path(run_dir)
        os.environ.setdefault("WANDB_DIR", str(wandb_dir))
        os.environ.setdefault("WANDB_CACHE_DIR", str(wandb_dir / "wandb" / ".cache"))
        os.environ.setdefault("WANDB_CONFIG_DIR", str(wandb_dir / "wandb" / ".config"))
        os.environ.setdefault("WANDB_DATA_DIR", str(wandb_dir / "wandb" / ".data"))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        id_file = Path(run_dir) / "wandb_run_id"
        self.last_step_file = Path(run_dir) / "wandb_last_step"
        continuing = id_file.exists() and resume_step != 0
        run_id = id_file.read_text().strip() if continuing else uuid.uuid4().hex[:12]
        self.last_step = int(self.last_step_file.read_text()) if continuing and self.last_step_file.exists() else 0
        _write_atomic(id_file, run_id)
        _write_atomic(self.last_step_file, str(self.last_step))
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=run_name,
            id=run_id,
            resume="allow",
            dir=str(wandb_dir),
            mode=mode,
            config=config,
        )
        slurm = slurm_job_info()
        if slurm:
            self.run.config.update({"slurm": slurm}, allow_val_change=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if step <= self.last_step:
            return  # already in this wandb run (logged before the crash this run resumed from)
        self.last_step = step
        _write_atomic(self.last_step_file, str(step))  # first: a kill between the two leaves a gap, never a repeat
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        self.run.finish()


def slurm_job_info() -> dict[str, Any]:
    """The Slurm job this process belongs to (empty outside Slurm)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return {}
    return {
        "job_id": os.environ["SLURM_JOB_ID"],
        "job_name": os.environ.get("SLURM_JOB_NAME"),
        "nodes": int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 1),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_plot(run_dir: Path) -> Optional[Path]:
    """PNG of training/validation loss (per source too, when logged) and learning rate against step, from
    metrics.jsonl (matplotlib Agg)."""
    records = read_metrics(Path(run_dir) / METRICS_FILE) if (Path(run_dir) / METRICS_FILE).exists() else []
    train = [r for r in records if r.get("loss") is not None]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    val = [r for r in records if r.get("val_loss") is not None]
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    by_source = sorted({key for r in val for key in r if key.startswith("val_loss/")})
    for key in by_source:  # the held-out loss of each source of a mixed dataset
        points = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        ax_loss.plot(*zip(*points), ".--", label=f"val loss, {key.split('/', 1)[1]}")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / PLOT_FILE
    tmp = path.with_name(f".{path.stem}.tmp.{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


class MetricsLogger:
    """Fans metrics out to the sinks; on ranks other than 0 it has none and does nothing."""

    def __init__(self, sinks: list[MetricsSink], progress: Optional[ProgressBarSink] = None) -> None:
        self.sinks = sinks
        self.progress = progress

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.advance(step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one failing sink must not lose the others' output
                log.warning("closing metrics sink %s failed: %s", type(sink).__name__, exc)


class SpeedMeter:
    """Tokens/s and MFU over the steps since the previous log, and peak memory.

    MFU = achieved model FLOP/s / (peak FLOP/s per device x devices), with model FLOPs per token from
    model.counting.flops_per_token (6N + attention) and the device's peak from model.peak_flops.
    """

    def __init__(
        self, *, flops_per_token: float, peak_flops_per_device: Optional[float], world_size: int, device_type: str
    ) -> None:
        self.flops_per_token = flops_per_token
        self.peak_total = peak_flops_per_device * world_size if peak_flops_per_device else None
        self.device_type = device_type
        self.last_time = time.perf_counter()
        self.tokens = 0

    def add_tokens(self, n: int) -> None:
        self.tokens += n

    def reset(self) -> None:
        self.last_time = time.perf_counter()
        self.tokens = 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside (evaluation, sampling, a checkpoint) out of tokens/s. The device is drained
        first, so the training work still queued on it is counted, not hidden in the pause."""
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.last_time += time.perf_counter() - start

    def measure(self) -> dict[str, Any]:
        now = time.perf_counter()
        elapsed = max(now - self.last_time, 1e-9)
        tokens_per_sec = self.tokens / elapsed
        mfu = None
        if self.peak_total is not None and math.isfinite(tokens_per_sec):
            mfu = self.flops_per_token * tokens_per_sec / self.peak_total
        self.last_time, self.tokens = now, 0
        return {"tokens_per_sec": tokens_per_sec, "mfu": mfu, "peak_mem_gib": self.peak_memory_gib()}

    def peak_memory_gib(self) -> float:
        """Peak accelerator memory allocated by torch on CUDA; peak resident host memory of the process on CPU."""
        if self.device_type == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
