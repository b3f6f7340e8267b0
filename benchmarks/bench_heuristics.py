"""CPU seconds of the heuristics step alone (Gopher repetition -> Gopher quality -> C4 -> FineWeb) over a JSONL of
documents, in fresh processes (the word tokenizer's memo starts empty, as in a pipeline task), optionally in turns
with another git revision's data_pipeline (A B A B ...), with a digest of every decision (rule, value, threshold,
text and metadata kept) so that two revisions can be shown to decide identically.

Run: `python benchmarks/bench_heuristics.py DOCS.jsonl [--against REV] [--runs 3] [--cpu 1]`, e.g. over the
normalize step's output of a `keep_intermediate=true` run (the step's input in the default pipeline). Each run is
one process pinned to one CPU (`taskset`, where present); the figure is the CPU time of the filter loop (the
tokenizer's tables built before it are reported apart). The machine may be shared: compare minima over several
alternated runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(path: Path) -> dict:
    """Run the step over every document of `path` in this process (the child's work)."""
    from data_pipeline.document import Document
    from data_pipeline.steps.filters.words import word_tokenizer
    from data_pipeline.steps.heuristics import Heuristics

    with path.open(encoding="utf-8") as lines:
        docs = [Document.from_record(json.loads(line)) for line in lines if line.strip()]
    start = time.process_time()
    step = Heuristics()
    word_tokenizer("en")
    built = time.process_time()
    digest = hashlib.sha256()
    kept = 0
    for original in docs:
        doc = Document(original.id, original.text, dict(original.metadata))
        verdict = step.filter(doc)
        kept += verdict is True
        decided = (doc.id, verdict, doc.text, doc.metadata) if verdict is True else (doc.id, verdict)
        digest.update(repr(decided).encode())
    return {
        "cpu_s": round(time.process_time() - built, 3),
        "build_s": round(built - start, 3),
        "documents": len(docs),
        "kept": kept,
        "digest": digest.hexdigest()[:16],
    }


def export(revision: str, into: Path) -> Path:
    """`data_pipeline/` as it is at `revision`, under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "data_pipeline"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_child(tree: Path, docs: Path, cpu: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), str(docs), "--child"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu), *command]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", type=Path, help="JSONL with id and text fields")
    parser.add_argument("--against", help="a git revision to run in turns with the working tree")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=1, help="the CPU each run is pinned to")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.docs.is_file():
        parser.error(f"{args.docs}: no such file (give the JSONL of documents to filter)")
    if args.child:
        print(json.dumps(measure(args.docs)))
        return
    with tempfile.TemporaryDirectory(prefix="bench_heuristics_") as scratch:
        trees = {"working tree": REPO}
        if args.against:
            trees[args.against] = export(args.against, Path(scratch))
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for run in range(args.runs):
            for name, tree in trees.items():
                result = run_child(tree, args.docs, args.cpu)
                results[name].append(result)
                print(f"run {run + 1} {name}: {json.dumps(result)}", flush=True)
    for name, runs in results.items():
        seconds = sorted(r["cpu_s"] for r in runs)
        print(f"{name}: min {seconds[0]:.3f} CPU s, median {seconds[len(seconds) // 2]:.3f} ({len(runs)} runs)")
    digests = {r["digest"] for runs in results.values() for r in runs}
    print("decisions identical" if len(digests) == 1 else f"decisions DIFFER: {sorted(digests)}")


if __name__ == "__main__":
    main()
