"""Full data pipeline throughput: documents per second per core through the default pipeline, end to end.

Run: `python benchmarks/bench_pipeline.py [--clean 2000] [--workers 1] [--tasks 2]`. Generates the synthetic
corpus (planted duplicates, junk, contamination), runs configs/pipeline/default.yaml (normalize -> exact_dedup ->
minhash_dedup -> heuristics -> decontaminate -> tokenize) with the local executor, and reports input documents
per second of wall time divided by the worker count, with each step's own output-stage time from its stats.
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker process

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=2000, help="clean documents in the synthetic corpus")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=2)
    args = parser.parse_args()

    from data_pipeline.cli import build_plan, compose_config
    from data_pipeline.executors.local import LocalExecutor
    from data_pipeline.synthetic import generate_corpus, write_corpus

    corpus = generate_corpus(n_clean=args.clean, n_exact_dups=args.clean // 20, n_near_dups=args.clean // 10,
                             n_junk=args.clean // 20, n_contaminated=args.clean // 50, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(corpus, Path(tmp) / "source", files=args.tasks)
        cfg = compose_config([
            "pipeline=default",
            f"input={paths['corpus']}",
            f"output={Path(tmp) / 'out'}",
            f"eval_sets=[{paths['eval']}]",
            f"tasks={args.tasks}",
        ])
        plan, skipped = build_plan(cfg)
        start = time.perf_counter()
        stats = LocalExecutor(plan, workers=args.workers, progress=lambda _: None).run()
        wall = time.perf_counter() - start
    n_docs = len(corpus.documents)
    print(json.dumps({
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "documents": n_docs,
        "steps": [s.name for s in plan.steps],
        "skipped": skipped,
        "workers": args.workers,
        "tasks": args.tasks,
        "wall_s": round(wall, 2),
        "docs_per_s_per_core": round(n_docs / wall / args.workers, 1),
        "docs_out": {name: s.get("docs_out") for name, s in stats.items()},
        "output_stage_time_s": {name: round(s.get("time_s", 0.0), 2) for name, s in stats.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
