"""One PyTorch-profiler summary of Loom's training step: where a step's device time goes, kernel by kernel.

Builds Loom's real torch-layout step in this process (benchmarks/host_sync.py `loom_torch_module`: the model laid
out by `parallelize`, fused AdamW, lr schedule, clipping, as the launcher builds them), runs `--warmup` steps
(compilation included), then profiles `--steps` steps and prints the step time and the ops and kernels that took
the most device time (on CPU: CPU time). benchmarks/gpu_check.py runs it once when its time budget allows.

    python benchmarks/profile_step.py --model llama3_1b --batch 8 --seq 2048 --parallel compile=true \
        --parallel compile_scope=model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _key_value(text: str):
    import yaml

    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv=None) -> None:
    from gpu_check import loom_model_config
    from host_sync import loom_torch_module

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2_124m")
    parser.add_argument("--set", type=_key_value, action="append", default=[], help="model config key=value")
    parser.add_argument(
        "--parallel",
        type=_key_value,
        action="append",
        default=[],
        help="ParallelConfig key=value (compile, compile_scope, float8, ...)",
    )
    parser.add_argument("--layout", choices=["single", "fsdp"], default="single")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    model_cfg = loom_model_config(args.model, dict(args.set))
    if args.layout == "fsdp":
        import torch.distributed as dist

        cuda = device.type == "cuda"
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            device_id=torch.device("cuda", torch.cuda.current_device()) if cuda else None,
        )
    module = loom_torch_module(
        model_cfg,
        device,
        layout=args.layout,
        precision=args.precision,
        micro_batch_size=args.batch,
        grad_accum=1,
        seq_len=args.seq,
        parallel=dict(args.parallel),
    )
    from launcher.trainer import to_device

    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(0, model_cfg.vocab_size, (args.batch, args.seq + 1), generator=gen)

    def train_step(batch: torch.Tensor) -> None:
        module.train_step(batch[:, :-1], batch[:, 1:])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        train_step(to_device(batch, device))
    sync()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(to_device(batch, device))
        sync()
        elapsed = (time.perf_counter() - start) / args.steps
    tokens = args.batch * args.seq
    print(
        f"profiled {args.steps} steps of {args.model} batch {args.batch} seq {args.seq} {args.precision} "
        f"{dict(args.parallel)} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: "
        f"{elapsed * 1000:.1f} ms/step under the profiler ({tokens / elapsed:,.0f} tokens/s)"
    )
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
