"""Each pass of a streamed run reads its source once: the raw input is read by the first streaming group's tasks
only, once per shard, and every later task reads documents written once before it (one shard; the re-applied
removal sets of the dedup steps that wrote no copy; tokenize's train stage reads each shard once for its sample),
never the same file twice in one task."""

from __future__ import annotations

from collections import Counter

from data_pipeline.cli import build_plan, compose_config
from data_pipeline.executors import streams
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.synthetic import generate_corpus, write_corpus


def test_the_default_pipeline_reads_each_source_once_per_pass(tmp_path, monkeypatch):
    reads: Counter = Counter()
    real_input, real_shard = streams.read_input_shard, streams.read_shard

    def counted(source: str, rows):
        first = True
        for row in rows:
            if first:  # a pass that never pulls a row (MinHash's band_pairs stage) reads nothing
                reads[source] += 1
                first = False
            yield row

    monkeypatch.setattr(
        streams,
        "read_input_shard",
        lambda spec, rank, tasks, **kw: counted(f"input/{rank}", real_input(spec, rank, tasks, **kw)),
    )
    monkeypatch.setattr(
        streams, "read_shard", lambda path: counted(f"{path.parent.name}/{path.name}", real_shard(path))
    )
    corpus = generate_corpus(n_clean=60, n_exact_dups=5, n_near_dups=8, n_junk=8, n_contaminated=4, seed=2)
    paths = write_corpus(corpus, tmp_path / "raw", files=2)
    overrides = [
        "pipeline=default",
        f"input={paths['corpus']}",
        f"output={tmp_path / 'out'}",
        f"eval_sets=[{paths['eval']}]",
        "tasks=2",
        "report=false",
        "pipeline.steps.7.params.vocab_size=300",
    ]
    LocalExecutor(build_plan(compose_config(overrides))[0], workers=1).run()
    per_rank = {
        # the group normalize -> heuristics: the only reader of the raw input
        "input": 1,
        # the heuristics' documents (compressed), the source of every pass up to the last dedup barrier: exact
        # dedup's hash and run stages, MinHash's signatures and run (exact dedup's removals re-applied), boilerplate
        # dedup's hash and run (both removal sets re-applied; its run streams on through PII and decontaminate)
        "heuristics": 6,
        # the documents kept: tokenize's sample, its train stage (the sampled texts, read back by row) and its run
        "decontaminate": 3,
    }
    names = {"heuristics": "shard-{rank:05d}.jsonl.zst", "decontaminate": "shard-{rank:05d}.jsonl"}
    expected = Counter(
        {
            f"{source}/{rank}" if source == "input" else f"{source}/{names[source].format(rank=rank)}": n
            for source, n in per_rank.items()
            for rank in range(2)
        }
    )
    assert reads == expected
