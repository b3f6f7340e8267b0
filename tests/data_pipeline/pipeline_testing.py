"""Helpers shared by the data pipeline tests (a uniquely named module: every test directory has a conftest)."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.cli import build_plan, compose_config
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.shards import read_records


def run_clean_pipeline(corpus_dir: Path, eval_path: Path, output: Path, tasks: int = 4, workers: int = 1, extra=()):
    cfg = compose_config(
        [
            "pipeline=clean",
            f"input={corpus_dir}",
            f"output={output}",
            f"eval_sets=[{eval_path}]",
            f"tasks={tasks}",
            *extra,
        ]
    )
    plan, _ = build_plan(cfg)
    return LocalExecutor(plan, workers=workers).run()


def removed_documents(output: Path) -> dict[str, tuple[str, dict]]:
    """id -> (step, exclusion record) over every step's exclusion files."""
    removed = {}
    for path in sorted((output / "excluded").glob("*/*.jsonl.zst")):
        for record in read_records(path):
            removed[record["id"]] = (path.parent.name, record)
    return removed


def output_files(root: Path) -> dict[str, bytes]:
    """Every data file of a run (kept shards, exclusions, quarantine), excluding timing stats and markers."""
    files = {}
    for path in sorted(root.rglob("shard-*")):
        relative = path.relative_to(root)
        if relative.parts[0] not in (".work", ".markers", "stats"):
            files[str(relative)] = path.read_bytes()
    return files
