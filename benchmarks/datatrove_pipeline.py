"""datatrove's equivalent of our default pipeline, the yardstick of benchmarks/bench_pipeline.py: JSONL reader ->
Gopher repetition -> Gopher quality -> C4 (terminal-punctuation rule off) -> FineWeb filters (FineWeb's order
and settings, as datatrove's examples/fineweb.py) -> MinHash dedup (signatures, buckets, clusters, filter: 14 x 8
hashes, word 5-grams, as FineWeb) -> tokenizer (the BPE our run trained, tokenizer.json).

Runs with datatrove's LocalPipelineExecutor, one worker (one core). Imports only datatrove: it runs in the separate
environment the benchmark creates, never in Loom's. Prints one JSON line: wall and CPU seconds, documents in and
out. Usage: python datatrove_pipeline.py CORPUS_DIR TOKENIZER_JSON WORK_DIR TASKS
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> None:
    corpus, tokenizer, work, tasks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    start, cpu_start = time.perf_counter(), time.process_time()
    config = MinhashConfig(num_buckets=14, hashes_per_bucket=8, n_grams=5)

    def run(pipeline, n_tasks, name):
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=1, logging_dir=f"{work}/logs/{name}").run()

    run(
        [
            JsonlReader(corpus),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            FineWebQualityFilter(),
            JsonlWriter(f"{work}/filtered"),
        ],
        tasks,
        "filter",
    )
    filtered = time.perf_counter() - start
    run(
        [JsonlReader(f"{work}/filtered"), MinhashDedupSignature(output_folder=f"{work}/signatures", config=config)],
        tasks,
        "signatures",
    )
    run(
        [MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets", config=config)],
        config.num_buckets,
        "buckets",
    )
    run(
        [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config)],
        1,
        "clusters",
    )
    run(
        [
            JsonlReader(f"{work}/filtered"),
            MinhashDedupFilter(input_folder=f"{work}/remove_ids"),
            DocumentTokenizer(
                output_folder=f"{work}/tokens",
                tokenizer_name_or_path=tokenizer,
                eos_token="<|endoftext|>",
                shuffle_documents=False,
            ),
        ],
        tasks,
        "dedup_tokenize",
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = {}
    for name in ("filter", "dedup_tokenize"):
        with open(f"{work}/logs/{name}/stats.json") as f:
            stats[name] = json.load(f)
    print(
        json.dumps(
            {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu + children.ru_utime + children.ru_stime, 3),
                "filters_wall_s": round(filtered, 3),
                "stats": stats,
            }
        )
    )


if __name__ == "__main__":
    main()
