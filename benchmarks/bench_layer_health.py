"""What trainer.layer_health costs: the default run's training step with the per-layer probe armed (a log step)
against the same step unarmed, alternating in one process so machine drift hits both alike.

    python benchmarks/bench_layer_health.py [--pairs 40] [--log-every 10] [-- <launcher overrides>]

Builds the run's real train module from the composed config (default: the default run, model=tiny, 16 x 128
tokens per step, fp32, on CPU unless trainer.device says otherwise), trains `--warmup` steps, then `--pairs`
pairs of steps in turn: one plain, one measured (arm, step, read and reduce the figures: everything the callback
does). Prints the median step times, the median of the pairs' ratios, and the cost per step of the run at
`--log-every` (the probe runs on log steps only): (measured - plain) / plain / log_every.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--log-every", type=int, default=10, help="the run's trainer.log_every")
    parser.add_argument("overrides", nargs="*", help="launcher overrides (after --)")
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_dir

    import launcher.train  # noqa: F401 - registers the schema and resolvers, as the entry point does
    from launcher.distributed import init_distributed
    from launcher.layer_health import LayerHealth
    from launcher.train_modules import build_train_module
    from launcher.validation import validate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.run_dir=/tmp/unused", *args.overrides])
    plan = validate(cfg, world_size=1)
    env = init_distributed(plan.cfg.trainer.device, 600)
    plan.dims.build_mesh(env.device.type)
    module = build_train_module(plan, env)
    probe = LayerHealth(module, measure_forward=not plan.cfg.parallel.compile)
    module.layer_health = probe
    module.train(True)
    vocab, seq = plan.cfg.model.vocab_size, plan.cfg.data.seq_len
    generator = torch.Generator().manual_seed(0)

    def step(measured: bool) -> float:
        batch = torch.randint(0, vocab, (plan.global_batch, seq + 1), generator=generator).to(env.device)
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        probe.arm(measured)
        out = module.train_step(batch[:, :-1], batch[:, 1:])
        out.loss.item()  # a log step reads the loss too: both sides wait for the device
        if measured:
            probe.figures()
        return time.perf_counter() - start

    for i in range(args.warmup):
        step(i % 2 == 1)
    plain, measured = [], []
    for _ in range(args.pairs):
        plain.append(step(False))
        measured.append(step(True))
    ratios = [m / p for m, p in zip(measured, plain)]
    median_ratio = statistics.median(ratios)
    summary = {
        "device": torch.cuda.get_device_name() if env.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "overrides": args.overrides,
        "pairs": args.pairs,
        "plain_step_s_median": statistics.median(plain),
        "measured_step_s_median": statistics.median(measured),
        "pair_ratio_median": median_ratio,
        "pair_ratio_quartiles": statistics.quantiles(ratios, n=4),
        "log_every": args.log_every,
        "cost_per_step_at_log_every": (median_ratio - 1) / args.log_every,
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
