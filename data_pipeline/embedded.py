"""The default training corpus (`data=embedded`): the synthetic corpus put through the real default pipeline.

Building it exercises every default step (normalize, heuristics, exact and MinHash dedup, decontamination
against the generated eval set, BPE training and tokenization), so a training run with no data of its own still
trains on pipeline output. It is built once per cache directory and version; concurrent callers (ranks, tests)
serialise on a file lock and the later ones find it ready.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

# Bump when the generator, its parameters or the default pipeline change, so stale caches are rebuilt.
CORPUS_VERSION = "embedded-v4"
N_CLEAN_DOCUMENTS = 4000
TASKS = 2


def build_default_corpus(cache_dir: str | os.PathLike, workers: int = 2) -> Path:
    """Return `<cache_dir>/<version>/out/tokens`, building it first if needed (seconds; < 60 s on 2 cores)."""
    root = Path(cache_dir) / CORPUS_VERSION
    done = root / "DONE"
    if done.exists():
        return Path(json.loads(done.read_text())["tokens"])
    root.mkdir(parents=True, exist_ok=True)
    with open(Path(cache_dir) / f".{CORPUS_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if done.exists():
                return Path(json.loads(done.read_text())["tokens"])
            tokens = _build(root, workers)
            tmp = root / f".DONE.tmp.{os.getpid()}"
            tmp.write_text(json.dumps({"tokens": str(tokens)}))
            os.replace(tmp, done)
            return tokens
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(root: Path, workers: int) -> Path:
    from data_pipeline.cli import build_plan, compose_config
    from data_pipeline.executors.local import LocalExecutor
    from data_pipeline.report import write_report
    from data_pipeline.synthetic import generate_corpus, write_corpus

    source, output = root / "source", root / "out"
    for stale in (source, output):  # a build killed earlier: start over (the run is seconds)
        shutil.rmtree(stale, ignore_errors=True)
    corpus = generate_corpus(
        n_clean=N_CLEAN_DOCUMENTS, n_exact_dups=100, n_near_dups=100, n_junk=60, n_contaminated=20, seed=0
    )
    paths = write_corpus(corpus, source, files=TASKS)
    cfg = compose_config(
        [
            "pipeline=default",
            f"input={paths['corpus']}",
            f"output={output}",
            f"eval_sets=[{paths['eval']}]",
            f"tasks={TASKS}",
        ]
    )
    plan, skipped = build_plan(cfg)
    LocalExecutor(plan, workers=workers).run()
    write_report(plan.root, [s.name for s in plan.steps], skipped=skipped)
    tokens = output / "tokens"
    log.info("embedded corpus ready: %s", tokens)
    return tokens
