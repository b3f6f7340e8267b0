"""The one command for a GPU machine: Loom's first light on CUDA, then its speed against a plain compiled loop.

On the GPU machine (PyTorch and transformers are there; what Loom needs besides travels as wheels):

    python3 benchmarks/gpu_check.py --wheels .whl --out $OUT/gpu_results.json --log-dir $OUT

Here, first (fetches the wheels for that machine's Python 3.12 and records the commit they go with):

    .venv/bin/python benchmarks/gpu_check.py --download-wheels .whl

What it does, inside one time budget (`--budget-s`, 480 s by default: the device is lent for about 15 minutes,
machine start included, and the run must leave time for a second try):

1. Installs the carried wheels (hydra-core, omegaconf, antlr4, datasketch, torchao) into a private directory.
2. Correctness on the device, a tiny Llama-style model on learnable packed shards through the real launcher
   (`python -m launcher.train`, several runs at once): 30 steps in fp32 one process vs FSDP2 on a 1-rank mesh vs
   whole-model compiled, equal to 1e-4 in loss at every step and in the final weights; bf16 within 2% of fp32 at
   step 30; the run resumed from its step-15 checkpoint continues bitwise; cached generation equals uncached;
   the Hugging Face export loads in transformers and gives the same logits; no host sync in Loom's step (CUDA's
   sync debug mode plus an op recorder, benchmarks/host_sync.py).
3. Throughput on the same GPU: benchmarks/reference_train.py (a hand-written compiled loop) against Loom's real
   trainer (benchmarks/bench_train.py, data=synthetic) on gpt2_124m batch 32 x 1024, llama3_1b batch 8 x 2048
   and, if time allows, gpt2_1.5b batch 16 x 1024: tokens/s (median over timed steps after warm-up; Loom's are
   its own logged figures, checked against the wall clock), MFU (model/counting.py FLOPs) over the device's dense
   bf16 peak (model/peak_flops.py), peak memory, Loom/reference.
4. With time left: one profiler summary (benchmarks/profile_step.py), then optional Loom variants, each against
   Loom's primary row of the same shape (`ratio_vs_loom_primary`), in this order: FSDP2 + per-block compile,
   float8; the model's speed options, which stay off by default until a run like this shows they pay
   (model.fused_projections, model.vocab_multiple=128 on GPT-2's 50257-token vocabulary, and FlexAttention
   against SDPA's shared dense mask on a sliding-window and a document-masked llama3_1b); then gpt2_1.5b. What
   does not fit is skipped, and said so in the results; `--jobs` picks jobs by name for a second call (e.g.
   `--parts throughput --jobs "llama3_1b window"`).

It writes the results JSON (every row: config, batch, seq, tokens_per_sec, mfu, peak_mem_gib, ratio_vs_reference,
device, torch, date, commit), a log of every run (--log-dir), and prints the RESULTS.md rows. Exit status 0 only
when every correctness check passed and every required row was measured.

`--device cpu --tiny` runs all of it on CPU with tiny shapes and the aot_eager compile backend (Inductor's C++
builds take minutes on a small CPU), so the test suite proves the script (tests/benchmarks/test_gpu_check.py);
its figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# What the GPU machine lacks (its image has torch, transformers, numpy, scipy, PyYAML, safetensors, tqdm, ...).
WHEEL_PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "datasketch", "torchao")
_SOURCE_ONLY = ("antlr4-python3-runtime",)  # published as an sdist only: built into a (pure-Python) wheel here
_GPU_PYTHON = "3.12"
_GPU_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
COMMIT_FILE = "commit.txt"

# The correctness model: Llama-style (RoPE, GQA, SwiGLU, RMSNorm), on packed shards of a 256-token vocabulary.
CORRECTNESS_MODEL = {"vocab_size": 256, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64}
CORRECTNESS_STEPS, RESUME_FROM = 30, 15
LOSS_RTOL = WEIGHT_RTOL = 1e-4
BF16_TOLERANCE = 0.02


@dataclass
class Shape:
    config: str
    batch: int
    seq: int
    overrides: dict = field(default_factory=dict)  # model config keys (tiny mode shrinks the real configs)
    required: bool = True
    estimate_s: float = 120.0  # one run's guess (start, compile, steps) used to decide what fits the budget
    label: str = ""  # what the shape changes in the named model (the masked-attention shapes)


LOOM_PRIMARY = "single, compile(model)"
LOOM_VARIANTS = {
    LOOM_PRIMARY: ["parallel=single", "parallel.compile=true", "parallel.compile_scope=model"],
    "fsdp bf16 params, compile(block)": [
        "parallel=fsdp",
        "parallel.fsdp_param_dtype=bfloat16",
        "parallel.compile=true",
        "parallel.compile_scope=block",
    ],
    "single, compile(model), float8 rowwise": [
        "parallel=single",
        "parallel.compile=true",
        "parallel.compile_scope=model",
        "parallel.float8=rowwise",
    ],
}
# The model's speed options (model/config.py), each on top of the primary variant.
SPEED_OPTIONS = {
    "fused projections": "model.fused_projections=true",
    "vocab padded to 128": "model.vocab_multiple=128",
    "flex attention": "model.attention_backend=flex",
}
LOOM_VARIANTS.update(
    {f"{LOOM_PRIMARY}, {name}": [*LOOM_VARIANTS[LOOM_PRIMARY], override] for name, override in SPEED_OPTIONS.items()}
)
# Estimates are guesses made before any GPU run (process start ~15 s, Inductor compile ~40-90 s, 40 steps): replace
# them with what the first run measures.
GPU_SHAPES = [
    Shape("gpt2_124m", 32, 1024, estimate_s=100),
    Shape("llama3_1b", 8, 2048, estimate_s=130),
    Shape("gpt2_1.5b", 16, 1024, required=False, estimate_s=240),
]
# Masked attention, where FlexAttention may pay: a 512-token window in every layer, and document masking (the
# synthetic tokens hold token 0 now and then, so rows hold a few documents; the masked path runs regardless).
MASKED = {"window": {"sliding_window": 512}, "documents": {"document_mask_eos_id": 0}}
_TINY_GPT2 = {"vocab_size": 256, "dim": 64, "n_layers": 2, "n_heads": 4, "hidden_dim": 256, "max_seq_len": 64}
_TINY_LLAMA = {
    "vocab_size": 256,
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "head_dim": 16,
    "hidden_dim": 128,
    "max_seq_len": 64,
}
# One tiny shape keeps the CPU test short; the GPT-2 family of the reference is checked against Loom's model in
# tests/benchmarks/test_gpu_check.py without a run.
TINY_SHAPES = [
    Shape("llama3_1b", 4, 64, _TINY_LLAMA, estimate_s=40),
    Shape("gpt2_124m", 4, 64, _TINY_GPT2, required=False, estimate_s=40),
]
ROW_FIELDS = (
    "config",
    "batch",
    "seq",
    "tokens_per_sec",
    "mfu",
    "peak_mem_gib",
    "ratio_vs_reference",
    "device",
    "torch",
    "date",
    "commit",
)


# ------------------------------------------------------------------------------------------------ wheels
def download_wheels(directory: Path) -> None:
    """Wheels for the GPU machine (x86-64, CPython 3.12) of the versions installed here, and the commit."""
    from importlib.metadata import version

    directory.mkdir(parents=True, exist_ok=True)
    for name in WHEEL_PACKAGES:
        spec = f"{name}=={version(name)}"
        if name in _SOURCE_ONLY:
            cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(directory), spec]
        else:
            platforms = [arg for p in _GPU_PLATFORMS for arg in ("--platform", p)]
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                _GPU_PYTHON,
                "--implementation",
                "cp",
                *platforms,
                "-d",
                str(directory),
                spec,
            ]
        subprocess.run(cmd, check=True)
    from bench_train import git_commit

    (directory / COMMIT_FILE).write_text(git_commit() + "\n")
    wheels = sorted(directory.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB, in {directory} (commit {git_commit()}):")
    print("\n".join(f"  {w.name}" for w in wheels))


def install_wheels(directory: Path, site: Path) -> None:
    """pip-install every carried wheel into `site` (no index, no dependencies: the machine has the rest) and put it
    on this process's and its children's import path."""
    wheels = sorted(directory.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--wheels {directory}: no .whl files (make them with --download-wheels here first)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(site),
            *map(str, wheels),
        ],
        check=True,
    )
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


def missing_modules() -> list[str]:
    import importlib.util

    return [
        m
        for m in ("hydra", "omegaconf", "antlr4", "yaml", "safetensors", "transformers")
        if importlib.util.find_spec(m) is None
    ]


# ------------------------------------------------------------------------------------------------ helpers
class Budget:
    """Wall-clock seconds left of the whole run; every part asks it before starting and caps its waits by it."""

    def __init__(self, total_s: float, reserve_s: float = 15.0) -> None:
        self.start, self.total, self.reserve = time.monotonic(), total_s, reserve_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total - self.reserve - self.elapsed()


@dataclass
class Context:
    device: str
    tiny: bool
    work: Path
    log_dir: Path
    budget: Budget
    compile_backend: str
    logs: list = field(default_factory=list)  # (name, path) of every child run's log

    def log_path(self, name: str) -> Path:
        path = self.work / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append((name, path))
        return path


def child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "TORCHELASTIC_", "SLURM_"))
    }
    env.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
    return env


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
    )


def wait(proc: subprocess.Popen, timeout: float) -> Optional[int]:
    """The exit status, or None after killing the process group of a run that outlasted `timeout`."""
    try:
        return proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return None


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:])


def loom_model_config(name: str, overrides: dict):
    """Loom's ModelConfig of configs/model/<name>.yaml with `overrides` (validated like Hydra would)."""
    from omegaconf import OmegaConf

    from model.config import ModelConfig

    merged = OmegaConf.merge(
        OmegaConf.structured(ModelConfig), OmegaConf.load(REPO / "configs/model" / f"{name}.yaml"), overrides
    )
    return OmegaConf.to_object(merged)


def check(name: str, fn: Callable[[], tuple[bool, dict]]) -> dict:
    """Run one correctness check; a crash is a failed check with its traceback, never a lost run."""
    started = time.monotonic()
    try:
        passed, detail = fn()
    except Exception as exc:  # noqa: BLE001 - reported as the check's failure
        passed, detail = False, {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    result = {"name": name, "passed": bool(passed), "seconds": round(time.monotonic() - started, 1), **detail}
    print(
        f"[{'PASS' if passed else 'FAIL'}] {name}: {json.dumps({k: v for k, v in detail.items() if k != 'traceback'})}",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------------------------------ correctness
def correctness_overrides(ctx: Context, shards: Path, run_dir: Path) -> list[str]:
    return [
        *(f"model.{k}={v}" for k, v in CORRECTNESS_MODEL.items()),
        "data=packed",
        f"data.path={shards}",
        "data.seq_len=32",
        f"trainer.run_dir={run_dir}",
        f"trainer.device={ctx.device}",
        f"trainer.max_steps={CORRECTNESS_STEPS}",
        "trainer.global_batch_size=8",
        "trainer.micro_batch_size=4",
        "trainer.log_every=1",
        "trainer.eval_batches=0",
        "trainer.sample_every=-1",
        f"trainer.checkpoint_every={RESUME_FROM}",
        "trainer.keep_checkpoints=0",
        "trainer.progress_bar=false",
        "trainer.dist_timeout_s=120",
        "schedule.warmup_steps=3",
        "logging.wandb.mode=disabled",
        "logging.plot=false",
    ]


def read_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def compare_losses(got: dict[int, float], want: dict[int, float], rtol: float) -> tuple[bool, dict]:
    """Every step present in both and |got - want| <= rtol * |want|."""
    if sorted(got) != sorted(want):
        return False, {"steps_differ": [sorted(got), sorted(want)]}
    worst = max(abs(got[s] - want[s]) / max(abs(want[s]), 1e-12) for s in want)
    return worst <= rtol, {"max_rel_loss_diff": worst, "steps": len(want)}


def compare_weights(got: dict, want: dict, rtol: float) -> tuple[bool, dict]:
    """Same names and shapes, and ||got - want|| / ||want|| <= rtol for every tensor."""
    if set(got) != set(want):
        return False, {"names_differ": sorted(set(got) ^ set(want))[:10]}
    worst, worst_name = 0.0, None
    for name, w in want.items():
        g = got[name]
        if g.shape != w.shape:
            return False, {"shape_differs": name}
        error = float((g.double() - w.double()).norm() / w.double().norm().clamp(min=1e-12))
        if error > worst or worst_name is None:
            worst, worst_name = error, name
    return worst <= rtol, {"max_rel_weight_diff": worst, "worst_tensor": worst_name, "tensors": len(want)}


def final_weights(run_dir: Path, step: int = CORRECTNESS_STEPS) -> dict:
    from model.checkpoint_io import load_model_checkpoint

    state, _ = load_model_checkpoint(run_dir / "checkpoints" / f"step_{step:08d}")
    return state


def launcher_cmd(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "launcher.train", *overrides]


def run_correctness(ctx: Context) -> list[dict]:
    """The launcher runs go at once (tiny models leave the device and cores mostly idle); the resumed run starts
    as soon as the fp32 run has published its step-15 checkpoint."""
    from data_pipeline.synthetic import write_arithmetic_shards

    work = ctx.work / "correctness"
    shards = write_arithmetic_shards(work / "shards", "gpu-check-arith")
    runs = {
        "fp32": [],
        "fsdp": ["parallel=fsdp"],
        "compiled": [
            "parallel.compile=true",
            "parallel.compile_scope=model",
            f"parallel.compile_backend={ctx.compile_backend}",
        ],
        "bf16": ["trainer.precision=bf16"],
    }
    procs = {
        name: start(
            launcher_cmd(correctness_overrides(ctx, shards, work / name) + extra), ctx.log_path(f"correctness_{name}")
        )
        for name, extra in runs.items()
    }
    results = [check("no_host_sync_in_step", lambda: host_sync_check(ctx))]  # in this process, meanwhile
    deadline = time.monotonic() + min(240.0, ctx.budget.left())
    checkpoint = work / "fp32" / "checkpoints" / f"step_{RESUME_FROM:08d}"
    while time.monotonic() < deadline:
        if "resumed" not in procs and (checkpoint / "COMPLETE").exists():
            shutil.copytree(checkpoint, work / "resumed" / "checkpoints" / checkpoint.name)
            procs["resumed"] = start(
                launcher_cmd(correctness_overrides(ctx, shards, work / "resumed")), ctx.log_path("correctness_resumed")
            )
        fp32_gone = procs["fp32"].poll() is not None
        if all(p.poll() is not None for p in procs.values()) and ("resumed" in procs or fp32_gone):
            break
        time.sleep(0.2)
    status = {name: wait(proc, deadline - time.monotonic()) for name, proc in procs.items()}
    failed = {name: rc for name, rc in status.items() if rc != 0}
    if "resumed" not in procs:
        failed["resumed"] = f"not started: no complete {checkpoint}"
    for name, rc in failed.items():
        results.append(
            check(
                f"run_{name}",
                lambda rc=rc, name=name: (
                    False,
                    {
                        "exit": rc if rc is not None else "killed at the correctness time cap",
                        "log_tail": tail(ctx.work / "logs" / f"correctness_{name}.log"),
                    },
                ),
            )
        )

    def losses(name: str) -> dict[int, float]:
        return {s: r["loss"] for s, r in read_records(work / name).items()}

    if "fp32" not in failed:
        for other in ("fsdp", "compiled"):
            if other not in failed:
                results.append(
                    check(
                        f"fp32_single_vs_{other}",
                        lambda other=other: _same_run(
                            losses(other), losses("fp32"), final_weights(work / other), final_weights(work / "fp32")
                        ),
                    )
                )
        if "bf16" not in failed:
            results.append(check("bf16_vs_fp32_at_step_30", lambda: bf16_check(losses("bf16"), losses("fp32"))))
        if "resumed" not in failed:
            results.append(check("resume_continues_bitwise", lambda: resume_check(work / "resumed", work / "fp32")))
        results.append(check("cached_generation_equals_uncached", lambda: generation_check(ctx, work / "fp32")))
        results.append(check("hf_export_loads_in_transformers", lambda: hf_check(ctx, work / "fp32", work / "hf")))
    return results


def _same_run(got_losses, want_losses, got_weights, want_weights) -> tuple[bool, dict]:
    losses_ok, loss_detail = compare_losses(got_losses, want_losses, LOSS_RTOL)
    weights_ok, weight_detail = compare_weights(got_weights, want_weights, WEIGHT_RTOL)
    return losses_ok and weights_ok, {**loss_detail, **weight_detail, "rtol": LOSS_RTOL}


def bf16_check(bf16: dict[int, float], fp32: dict[int, float]) -> tuple[bool, dict]:
    """bf16 within 2% of fp32 at the last step, on a run that learned (else 2% says nothing), and really bf16."""
    last, first = max(fp32), min(fp32)
    rel = abs(bf16[last] - fp32[last]) / fp32[last]
    learned = fp32[last] < 0.8 * fp32[first]
    differs = any(bf16[s] != fp32[s] for s in fp32)
    return rel <= BF16_TOLERANCE and learned and differs, {
        "step": last,
        "fp32_loss": fp32[last],
        "bf16_loss": bf16[last],
        "rel_diff": rel,
        "fp32_first_loss": fp32[first],
        "fp32_learned": learned,
        "bf16_differs_from_fp32": differs,
    }


def resume_check(resumed: Path, uninterrupted: Path) -> tuple[bool, dict]:
    """A run dir that held only the step-15 checkpoint, resumed to step 30, against the uninterrupted run: the
    same losses, gradient norms and final weights, bit for bit."""
    got, want = read_records(resumed), read_records(uninterrupted)
    steps = list(range(RESUME_FROM + 1, CORRECTNESS_STEPS + 1))
    if sorted(got) != steps:
        return False, {"resumed_steps": sorted(got)}
    same_metrics = all(got[s]["loss"] == want[s]["loss"] and got[s]["grad_norm"] == want[s]["grad_norm"] for s in steps)
    got_w, want_w = final_weights(resumed), final_weights(uninterrupted)
    same_weights = set(got_w) == set(want_w) and all(got_w[k].equal(want_w[k]) for k in want_w)
    return same_metrics and same_weights, {
        "steps": [steps[0], steps[-1]],
        "losses_and_grad_norms_equal": same_metrics,
        "weights_equal": same_weights,
    }


def _load_trained(run_dir: Path, device):
    import torch

    import model as model_lib
    from model.checkpoint_io import load_model_checkpoint

    state, cfg = load_model_checkpoint(run_dir)
    with torch.device(device):
        net = model_lib.build(cfg)
    net.load_state_dict(state)
    return net.eval()


def generation_check(ctx: Context, run_dir: Path) -> tuple[bool, dict]:
    """Greedy generation with the KV cache (two prompts of different lengths, left-padded into one batch) equals
    greedy decoding by a full forward pass over the whole sequence at every step."""
    import torch

    from model.generation import generate

    net = _load_trained(run_dir, ctx.device)
    prompts = [[7, 9, 11, 13, 15], [100, 101, 102, 103, 104, 105, 106, 107, 108]]
    new_tokens = 20
    cached = generate(net, prompts, new_tokens, greedy=True)
    uncached = []
    with torch.no_grad():
        for prompt in prompts:
            seq = list(prompt)
            for _ in range(new_tokens):
                logits = net(torch.tensor([seq], device=ctx.device))[0, -1]
                seq.append(int(logits.argmax()))
            uncached.append(seq[len(prompt) :])
    return cached == uncached, {"cached": cached, "uncached": uncached}


def hf_check(ctx: Context, run_dir: Path, hf_dir: Path) -> tuple[bool, dict]:
    """`model.hf export` of the trained run loads with transformers' AutoModelForCausalLM and gives Loom's logits."""
    import torch
    import transformers

    from model.hf import export_checkpoint

    export_checkpoint(run_dir, hf_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).to(ctx.device).eval()
    net = _load_trained(run_dir, ctx.device)
    tokens = torch.randint(1, 256, (2, 32), generator=torch.Generator().manual_seed(0)).to(ctx.device)
    with torch.no_grad():
        want, got = net(tokens).float(), hf(tokens).logits.float()
    rel = float((got - want).abs().max() / want.abs().max())
    return rel <= 1e-4, {
        "hf_class": type(hf).__name__,
        "transformers": transformers.__version__,
        "max_rel_logit_diff": rel,
    }


def host_sync_check(ctx: Context) -> tuple[bool, dict]:
    """Loom's TorchStep, one process (fp32, bf16) and FSDP2 on a 1-rank mesh (bf16): no host sync recorded."""
    import torch
    import torch.distributed as dist
    from host_sync import host_syncs_in_step

    device = torch.device(ctx.device)
    model_cfg = loom_model_config("tiny", CORRECTNESS_MODEL)
    found = {
        "single fp32": host_syncs_in_step(model_cfg, device, precision="fp32"),
        "single bf16": host_syncs_in_step(model_cfg, device, precision="bf16"),
    }
    cuda = device.type == "cuda"
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        store=dist.HashStore(),
        rank=0,
        world_size=1,
        device_id=torch.device("cuda", torch.cuda.current_device()) if cuda else None,
    )
    try:
        found["fsdp bf16"] = host_syncs_in_step(model_cfg, device, layout="fsdp", precision="bf16")
    finally:
        dist.destroy_process_group()
    return all(not v for v in found.values()), {"syncs": found}


# ------------------------------------------------------------------------------------------------ throughput
def model_json(ctx: Context, shape: Shape) -> Path:
    """Loom's resolved model config of a shape (every key: ModelConfig holds the defaults), for the reference."""
    import dataclasses

    path = ctx.work / f"{shape.config}.model.json"
    path.write_text(json.dumps(dataclasses.asdict(loom_model_config(shape.config, shape.overrides))))
    return path


def reference_command(ctx: Context, shape: Shape, warmup: int, steps: int) -> list[str]:
    return [
        sys.executable,
        str(BENCH / "reference_train.py"),
        "--model-json",
        str(model_json(ctx, shape)),
        "--batch",
        str(shape.batch),
        "--seq",
        str(shape.seq),
        "--warmup",
        str(warmup),
        "--steps",
        str(steps),
        "--device",
        ctx.device,
        "--compile-backend",
        ctx.compile_backend,
    ]


def loom_overrides(ctx: Context, shape: Shape, variant: str, max_steps: int, log_every: int) -> list[str]:
    return [
        f"model={shape.config}",
        *(f"model.{k}={v}" for k, v in shape.overrides.items()),
        "data=synthetic",
        f"data.seq_len={shape.seq}",
        f"trainer.global_batch_size={shape.batch}",
        f"trainer.micro_batch_size={shape.batch}",
        "trainer.precision=bf16",
        f"trainer.max_steps={max_steps}",
        f"trainer.log_every={log_every}",
        "schedule.warmup_steps=2",
        f"trainer.device={ctx.device}",
        *LOOM_VARIANTS[variant],
        f"parallel.compile_backend={ctx.compile_backend}",
    ]


def step_plan(ctx: Context) -> tuple[int, int]:
    """(warm-up steps, timed steps), the same for both sides: Loom logs every `warm-up` steps and its first
    window (compilation) is dropped, so it runs warm-up + timed steps as well."""
    return (2, 6) if ctx.tiny else (10, 30)


def run_reference(ctx: Context, shape: Shape, timeout: float) -> dict:
    warmup, steps = step_plan(ctx)
    cmd = reference_command(ctx, shape, warmup, steps)
    log = ctx.log_path(f"reference_{shape.config}")
    rc = wait(start(cmd, log), timeout)
    if rc != 0:
        raise RuntimeError(f"exit {rc if rc is not None else f'(killed after {timeout:.0f} s)'}:\n{tail(log)}")
    result = json.loads(next(line for line in reversed(log.read_text().splitlines()) if line.startswith("{")))
    return {
        "system": "reference",
        "variant": "torch.compile(model), fused AdamW, SDPA, bf16 autocast",
        "command": " ".join(cmd[1:]),
        **{
            k: result[k]
            for k in (
                "tokens_per_sec",
                "peak_mem_gib",
                "step_time_median_s",
                "tokens_per_sec_wall",
                "warmup_s",
                "params",
                "first_loss",
                "last_loss",
                "timed_steps",
            )
        },
    }


def run_loom(ctx: Context, shape: Shape, variant: str, timeout: float) -> dict:
    from bench_train import run_bench

    warmup, steps = step_plan(ctx)
    overrides = loom_overrides(ctx, shape, variant, warmup + steps, warmup)
    log = ctx.log_path(f"loom_{shape.config}_{variant.split(',')[0].replace(' ', '_')}_{len(ctx.logs)}")
    with open(log, "w") as handle:
        try:
            summary = run_bench(
                overrides, warmup_windows=1, log=handle, timeout=timeout, env=child_env(), stop_at_step=warmup + steps
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"killed after {timeout:.0f} s:\n{tail(log)}") from exc
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{tail(log)}") from exc
    from model.counting import count_parameters

    return {
        "system": "loom",
        "variant": variant,
        "command": "python benchmarks/bench_train.py --warmup-windows 1 -- " + " ".join(overrides),
        "tokens_per_sec": summary["tokens_per_sec"],
        "peak_mem_gib": summary["peak_mem_gib"],
        "mfu_logged": summary["mfu"],
        "windows": summary["windows"],
        "timed_steps": steps,
        "wallclock_tokens_per_sec": summary["wallclock_tokens_per_sec"],
        "logged_vs_wallclock": summary["logged_vs_wallclock"],
        "stopped_before_final_checkpoint": summary["stopped_before_final_checkpoint"],
        "params": count_parameters(loom_model_config(shape.config, shape.overrides)),
        "first_loss": summary["first_loss"],
        "last_loss": summary["last_loss"],
    }


@dataclass
class Job:
    name: str
    shape: Shape
    system: str  # reference | loom
    variant: Optional[str] = None
    required: bool = True
    why_not: Optional[str] = None  # set when the job cannot run on this machine at all


def plan_jobs(ctx: Context, float8_problem: Optional[str]) -> tuple[list[Job], list[Job]]:
    """(required jobs, optional jobs in the order they are worth running)."""
    shapes = TINY_SHAPES if ctx.tiny else GPU_SHAPES
    required = []
    for shape in (s for s in shapes if s.required):
        required.append(Job(f"{shape.config} reference", shape, "reference"))
        required.append(Job(f"{shape.config} loom", shape, "loom", LOOM_PRIMARY))
    first = shapes[0]
    llama = next(s for s in shapes if s.config == "llama3_1b")
    gpt2 = next(s for s in shapes if s.config == "gpt2_124m")
    optional = [
        Job(f"{first.config} loom fsdp", first, "loom", "fsdp bf16 params, compile(block)", required=False),
        Job(
            f"{llama.config} loom float8",
            llama,
            "loom",
            "single, compile(model), float8 rowwise",
            required=False,
            why_not=float8_problem,
        ),
    ]

    def option(shape: Shape, name: str, label: str = "") -> Job:
        return Job(f"{shape.config}{label} loom {name}", shape, "loom", f"{LOOM_PRIMARY}, {name}", required=False)

    optional += [
        option(gpt2, "fused projections"),
        option(gpt2, "vocab padded to 128"),
        option(llama, "fused projections"),
    ]
    for label, overrides in MASKED.items():
        masked = dataclasses.replace(llama, overrides={**llama.overrides, **overrides}, required=False, label=label)
        optional += [
            Job(f"{llama.config} {label} loom", masked, "loom", LOOM_PRIMARY, required=False),
            option(masked, "flex attention", f" {label}"),
        ]
    for shape in (s for s in shapes if not s.required):
        optional.append(Job(f"{shape.config} reference", shape, "reference", required=False))
        optional.append(Job(f"{shape.config} loom", shape, "loom", LOOM_PRIMARY, required=False))
    return required, optional


def select_jobs(jobs: list[Job], patterns: Optional[str]) -> list[Job]:
    """The jobs whose name contains one of the comma-separated `patterns` (all of them without patterns)."""
    if not patterns:
        return jobs
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    return [job for job in jobs if any(p in job.name for p in wanted)]


def run_throughput(ctx: Context, env: dict, jobs: list[Job]) -> tuple[list[dict], list[dict]]:
    """Run `jobs` in order. A required job always gets a row (measured, failed, or not run for lack of time); an
    optional one runs only when its estimate fits what is left of the budget, else it is listed as skipped."""
    rows, skipped = [], []
    for job in jobs:
        if not job.required and ctx.tiny:
            skipped.append({"job": job.name, "reason": "--tiny runs the required rows only"})
            continue
        if job.why_not:
            skipped.append({"job": job.name, "reason": job.why_not})
            continue
        base = {
            "config": job.shape.config,
            "shape": job.shape.label,
            "batch": job.shape.batch,
            "seq": job.shape.seq,
            "model_overrides": job.shape.overrides,
            "required": job.required,
            "system": job.system,
            "variant": job.variant,
            "tokens_per_sec": None,
            "peak_mem_gib": None,
            **env,
        }
        need = job.shape.estimate_s * 1.3
        timeout = min(max(2.5 * job.shape.estimate_s, 60.0), ctx.budget.left())
        if (not job.required and ctx.budget.left() < need) or timeout < 20:
            reason = f"time: {ctx.budget.left():.0f} s left of the budget, ~{need:.0f} s needed"
            if job.required:
                rows.append({**base, "status": f"not run: {reason}", "seconds": 0.0})
            else:
                skipped.append({"job": job.name, "reason": reason})
            continue
        print(
            f"--- {job.name} ({job.variant or 'reference'}), timeout {timeout:.0f} s, {ctx.budget.left():.0f} s left",
            flush=True,
        )
        started = time.monotonic()
        try:
            measured = (
                run_reference(ctx, job.shape, timeout)
                if job.system == "reference"
                else run_loom(ctx, job.shape, job.variant, timeout)
            )
            row = {**base, **measured, "status": "ok"}
        except Exception as exc:  # noqa: BLE001 - a failed row is recorded, the others still run
            row = {**base, "status": f"failed: {exc}"}
        row["seconds"] = round(time.monotonic() - started, 1)
        rows.append(row)
        print(
            f"    {row['status'].splitlines()[0]}: {row.get('tokens_per_sec')} tokens/s in {row['seconds']} s",
            flush=True,
        )
    return rows, skipped


def _shape_key(row: dict) -> tuple:
    return row["config"], row["batch"], row["seq"], json.dumps(row["model_overrides"], sort_keys=True)


def add_mfu_and_ratios(rows: list[dict], peak_flops: Optional[float]) -> None:
    """MFU from model.counting's FLOPs per token (6N + attention) over the device's peak, for both sides alike;
    each Loom row's tokens/s over its shape's reference row (the same model: masked shapes have none) and over
    Loom's primary row of the same shape (what an option or a layout gains)."""
    from model.counting import flops_per_token

    reference = {_shape_key(r): r["tokens_per_sec"] for r in rows if r["system"] == "reference"}
    primary = {_shape_key(r): r["tokens_per_sec"] for r in rows if r["variant"] == LOOM_PRIMARY}
    for row in rows:
        tps = row.get("tokens_per_sec")
        row["mfu"] = None
        if tps and peak_flops:
            cfg = loom_model_config(row["config"], row["model_overrides"])
            row["mfu"] = flops_per_token(cfg, row["seq"]) * tps / peak_flops
        ref, base = reference.get(_shape_key(row)), primary.get(_shape_key(row))
        row["ratio_vs_reference"] = (
            tps / ref
            if tps and ref and row["system"] == "loom"
            else (1.0 if row["system"] == "reference" and tps else None)
        )
        row["ratio_vs_loom_primary"] = tps / base if tps and base and row["system"] == "loom" else None


def run_profile(ctx: Context, shape: Shape) -> Optional[dict]:
    cmd = [
        sys.executable,
        str(BENCH / "profile_step.py"),
        "--model",
        shape.config,
        *(arg for k, v in shape.overrides.items() for arg in ("--set", f"{k}={v}")),
        "--batch",
        str(shape.batch),
        "--seq",
        str(shape.seq),
        "--parallel",
        "compile=true",
        "--parallel",
        "compile_scope=model",
        "--parallel",
        f"compile_backend={ctx.compile_backend}",
        "--warmup",
        "3" if ctx.tiny else "5",
        "--steps",
        "2" if ctx.tiny else "3",
        "--device",
        ctx.device,
    ]
    log = ctx.log_path(f"profile_{shape.config}")
    rc = wait(start(cmd, log), min(2.5 * shape.estimate_s, ctx.budget.left()))
    text = log.read_text(errors="replace") if log.exists() else ""
    summary = [line for line in text.splitlines() if line.startswith("profiled ")]
    return {
        "config": shape.config,
        "command": " ".join(cmd[1:]),
        "exit": rc,
        "summary": summary[0] if summary else None,
        "table": "\n".join(text.splitlines()[-40:]) if rc == 0 else tail(log, 30),
    }


# ------------------------------------------------------------------------------------------------ results
def environment(args: argparse.Namespace) -> dict:
    import torch
    from bench_train import git_commit

    from model.peak_flops import peak_flops

    commit = git_commit()
    if commit == "unknown" and args.wheels and (args.wheels / COMMIT_FILE).exists():
        commit = (args.wheels / COMMIT_FILE).read_text().strip() + " (from the wheels' commit.txt)"
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": device,
        "torch": torch.__version__,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "peak_flops": peak_flops(device) if args.device == "cuda" else None,
    }


def results_table(rows: list[dict]) -> str:
    lines = [
        "| date | device | config | batch x seq | system | tokens/s | MFU | peak mem (GiB) | Loom / reference "
        "| Loom / Loom primary | torch, commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tps = f"{r['tokens_per_sec']:,.0f}" if r.get("tokens_per_sec") else r["status"].splitlines()[0]
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") else "n/a"
        ratio = f"{r['ratio_vs_reference']:.2f}x" if r.get("ratio_vs_reference") else "n/a"
        gain = f"{r['ratio_vs_loom_primary']:.3f}x" if r.get("ratio_vs_loom_primary") else "n/a"
        system = r["system"] if r["system"] == "reference" else f"loom ({r['variant']})"
        config = f"{r['config']} ({r['shape']})" if r.get("shape") else r["config"]
        lines.append(
            f"| {r['date']} | {r['device']} | {config} | {r['batch']} x {r['seq']} | {system} | {tps} | "
            f"{mfu} | {mem} | {ratio} | {gain} | torch {r['torch']}, {r['commit']} |"
        )
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def write_logs(ctx: Context) -> Path:
    """Every child run's log (the last 300 lines of each) in one file: the device returns few files."""
    out = ctx.log_dir / "gpu_check_logs.txt"
    with open(out, "w") as handle:
        for name, path in ctx.logs:
            handle.write(f"===== {name} ({path})\n{tail(path, 300)}\n\n")
    return out


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--download-wheels",
        type=Path,
        metavar="DIR",
        help="only fetch the wheels for the GPU machine into DIR (run here, before the GPU call)",
    )
    parser.add_argument("--wheels", type=Path, help="install these carried wheels first (the GPU machine)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, required rows only (the CPU test)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget for everything")
    parser.add_argument(
        "--parts",
        default="correctness,throughput,profile",
        help="comma-separated subset of correctness,throughput,profile",
    )
    parser.add_argument(
        "--jobs",
        default=None,
        help="only the throughput jobs whose name contains one of these comma-separated strings "
        "(e.g. 'gpt2_124m loom,llama3_1b window'); the jobs are listed with their names",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/gpu_results.json; with --tiny the log dir's)",
    )
    parser.add_argument("--log-dir", type=Path, default=None, help="where the combined log goes (default: --out's)")
    parser.add_argument("--work-dir", type=Path, default=None, help="run directories (default: a temporary one)")
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend for both sides (default inductor; aot_eager with --device cpu)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(BENCH))
    if args.download_wheels:
        download_wheels(args.download_wheels)
        return 0
    budget = Budget(args.budget_s)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="loom-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.wheels:
        install_wheels(args.wheels, work / "site")
    missing = missing_modules()
    if missing:
        raise SystemExit(
            f"cannot run: {missing} not importable (carry their wheels: --download-wheels here, then --wheels there)"
        )
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (use --device cpu --tiny on a CPU)")
    out = args.out or ((args.log_dir or work) / "gpu_results.json" if args.tiny else BENCH / "gpu_results.json")
    log_dir = args.log_dir or out.parent
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        device=args.device,
        tiny=args.tiny,
        work=work,
        log_dir=log_dir,
        budget=budget,
        compile_backend=args.compile_backend or ("inductor" if args.device == "cuda" else "aot_eager"),
    )
    env = environment(args)
    parts = set(args.parts.split(","))
    print(
        f"gpu_check: {env['device']}, torch {env['torch']}, commit {env['commit']}, budget {args.budget_s:.0f} s, "
        f"compile backend {ctx.compile_backend}, work dir {work}",
        flush=True,
    )

    from parallel.float8 import float8_supported

    float8_problem = float8_supported(args.device) if args.device == "cuda" else "float8 rows are for GPUs"
    if float8_problem is None:
        import importlib.util

        float8_problem = None if importlib.util.find_spec("torchao") else "torchao is not installed"

    checks = run_correctness(ctx) if "correctness" in parts else []
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the correctness checks' blocks, before the timed runs share the device
    required, optional = (select_jobs(jobs, args.jobs) for jobs in plan_jobs(ctx, float8_problem))
    print(f"throughput jobs: required {[j.name for j in required]}, optional {[j.name for j in optional]}", flush=True)
    rows, skipped = run_throughput(ctx, env, required) if "throughput" in parts else ([], [])
    profile = None
    if "profile" in parts:  # what limits Loom is worth more than another optional row
        shape = next(s for s in (TINY_SHAPES if ctx.tiny else GPU_SHAPES) if s.config == "llama3_1b")
        if ctx.budget.left() >= shape.estimate_s:
            profile = run_profile(ctx, shape)
        else:
            skipped.append({"job": f"profile {shape.config}", "reason": f"time: {ctx.budget.left():.0f} s left"})
    if "throughput" in parts:
        more_rows, more_skipped = run_throughput(ctx, env, optional)
        rows, skipped = rows + more_rows, skipped + more_skipped
    add_mfu_and_ratios(rows, env["peak_flops"])

    correctness_passed = bool(checks) and all(c["passed"] for c in checks)
    required_ok = all(r["status"] == "ok" for r in rows if r["required"])
    ok = (correctness_passed or "correctness" not in parts) and required_ok
    results = {
        **env,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "mode": "tiny" if args.tiny else "full",
        "compile_backend": ctx.compile_backend,
        "budget_s": args.budget_s,
        "elapsed_s": round(budget.elapsed(), 1),
        "correctness_passed": correctness_passed,
        "correctness": checks,
        "rows": rows,
        "skipped": skipped,
        "profile": profile,
        "ok": ok,
        "row_fields": list(ROW_FIELDS),
    }
    write_json(out, results)
    logs = write_logs(ctx)
    if profile and profile.get("table"):
        print(profile["table"])
    print(
        f"\ncorrectness: {sum(c['passed'] for c in checks)}/{len(checks)} passed"
        + "".join(f"\n  FAILED {c['name']}: {c.get('error') or ''}" for c in checks if not c["passed"])
    )
    for s in skipped:
        print(f"skipped {s['job']}: {s['reason']}")
    print(results_table(rows))
    print(f"\nwrote {out} and {logs} in {budget.elapsed():.0f} s; {'OK' if ok else 'NOT OK'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
