"""Full data pipeline throughput, and against datatrove's equivalent on the same corpus, one core each.

Run: `python benchmarks/bench_pipeline.py [--clean 2000] [--tasks 2] [--runs 3] [--datatrove]`. Generates the synthetic
corpus (planted duplicates, junk, contamination) and runs configs/pipeline/default.yaml (normalize -> heuristics ->
exact_dedup -> minhash_dedup -> boilerplate_dedup -> pii -> decontaminate -> tokenize) with the local executor and one
worker. With --datatrove it also runs benchmarks/datatrove_pipeline.py (reader -> Gopher/C4/FineWeb filters -> MinHash
-> tokenizer, FineWeb's settings) in a separate environment it creates once under --datatrove-env (datatrove is never a
dependency of Loom), in turns with ours (A B A B ...), and reports the ratio run by run. For that comparison both sides
tokenize with the same tokenizer.json (datatrove's tokenizer step takes one; our default pipeline otherwise trains its
own BPE first, timed in the "ours" figures). Documents per second are input documents over wall seconds (one worker, so
per core) and over CPU seconds (user + system: the figure that stays put when other work shares the machine).
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core per worker process

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATATROVE = ["datatrove[processing,io]==0.10.1", "spacy>=3.8,<4"]  # spaCy: datatrove's English word tokenizer


def ensure_datatrove(env: Path) -> Path:
    python = env / "bin" / "python"
    if not (env / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *DATATROVE], check=True)
        (env / ".installed").write_text(" ".join(DATATROVE))
    return python


def run_ours(corpus: Path, eval_set: Path, output: Path, tasks: int, tokenizer: Path | None = None) -> dict:
    from data_pipeline.cli import build_plan, compose_config
    from data_pipeline.executors.local import LocalExecutor

    overrides = ["pipeline=default", f"input={corpus}", f"output={output}", f"eval_sets=[{eval_set}]", f"tasks={tasks}"]
    if tokenizer is not None:  # tokenize with a given tokenizer instead of training one, as datatrove's step does
        overrides.append(f"pipeline.steps.7.params.tokenizer={tokenizer}")
    cfg = compose_config(overrides)
    plan, skipped = build_plan(cfg)
    start, cpu_start = time.perf_counter(), time.process_time()
    stats = LocalExecutor(plan, workers=1, progress=lambda _: None).run()
    return {
        "wall_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "skipped": skipped,
        "docs_out": {name: s["docs_out"] for name, s in stats.items()},
        "cpu_s_per_step": {name: s["cpu_s"] for name, s in stats.items()},
    }


def run_datatrove(python: Path, corpus: Path, tokenizer: Path, work: Path, tasks: int) -> dict:
    result = subprocess.run(
        [
            str(python),
            str(REPO / "benchmarks" / "datatrove_pipeline.py"),
            str(corpus),
            str(tokenizer),
            str(work),
            str(tasks),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"datatrove pipeline failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def datatrove_counts(stats: dict) -> dict:
    """Documents each datatrove step passed on (and the tokens written), from its executor's stats.json."""
    out = {}
    for stage in stats.values():
        for step in stage:
            figures = step["stats"]
            value = figures.get("forwarded", figures.get("tokens", figures.get("documents")))
            out[step["name"]] = value["total"] if isinstance(value, dict) else value
    return out


def commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
    ).stdout
    return head + ("+uncommitted" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", type=int, default=2000, help="clean documents in the synthetic corpus")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--datatrove", action="store_true", help="also run datatrove's equivalent pipeline")
    parser.add_argument("--datatrove-env", type=Path, default=REPO / ".cache" / "datatrove-env")
    args = parser.parse_args()

    from data_pipeline.synthetic import generate_corpus, write_corpus

    corpus = generate_corpus(
        n_clean=args.clean,
        n_exact_dups=args.clean // 20,
        n_near_dups=args.clean // 10,
        n_junk=args.clean // 20,
        n_contaminated=args.clean // 50,
        seed=0,
    )
    n_docs = len(corpus.documents)
    python = ensure_datatrove(args.datatrove_env) if args.datatrove else None
    ours, ours_given, theirs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(corpus, Path(tmp) / "source", files=args.tasks)
        tokenizer = Path(tmp) / "tokenizer.json"
        if python is not None:  # one BPE for both sides of the comparison, trained the way our tokenize step does
            from data_pipeline.tokenizer import DEFAULT_EOS, save_tokenizer, train_bpe

            save_tokenizer(train_bpe((d["text"] for d in corpus.documents), 2048, [DEFAULT_EOS], 2), tokenizer)
        for run in range(args.runs):  # in turns, so a change in the machine's load hits both sides alike
            ours.append(run_ours(paths["corpus"], paths["eval"], Path(tmp) / f"ours-{run}", args.tasks))
            shutil.rmtree(Path(tmp) / f"ours-{run}")
            if python is not None:
                ours_given.append(
                    run_ours(paths["corpus"], paths["eval"], Path(tmp) / f"given-{run}", args.tasks, tokenizer)
                )
                shutil.rmtree(Path(tmp) / f"given-{run}")
                theirs.append(
                    run_datatrove(python, paths["corpus"], tokenizer, Path(tmp) / f"datatrove-{run}", args.tasks)
                )

    def rates(runs: list[dict]) -> dict:
        return {
            "wall_s": [round(r["wall_s"], 2) for r in runs],
            "cpu_s": [round(r["cpu_s"], 2) for r in runs],
            "docs_per_s_per_core": [round(n_docs / r["wall_s"], 1) for r in runs],
            "docs_per_cpu_s": [round(n_docs / r["cpu_s"], 1) for r in runs],
            "median_docs_per_s_per_core": round(statistics.median(n_docs / r["wall_s"] for r in runs), 1),
            "median_docs_per_cpu_s": round(statistics.median(n_docs / r["cpu_s"] for r in runs), 1),
        }

    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "documents": n_docs,
        "tasks": args.tasks,
        "workers": 1,
        "ours": {
            **rates(ours),
            "docs_out": ours[-1]["docs_out"],
            "skipped": ours[-1]["skipped"],
            "cpu_s_per_step_last_run": ours[-1]["cpu_s_per_step"],
        },
    }
    if theirs:
        report["ours_given_tokenizer"] = rates(ours_given)
        report["datatrove"] = {
            **rates(theirs),
            "filters_wall_s": [t["filters_wall_s"] for t in theirs],
            "docs_out": datatrove_counts(theirs[-1]["stats"]),
        }
        # Same work on the tokenizer side: both tokenize with the same given tokenizer.json.
        report["speedup_wall_per_run"] = [round(t["wall_s"] / o["wall_s"], 2) for o, t in zip(ours_given, theirs)]
        report["speedup_cpu_per_run"] = [round(t["cpu_s"] / o["cpu_s"], 2) for o, t in zip(ours_given, theirs)]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
