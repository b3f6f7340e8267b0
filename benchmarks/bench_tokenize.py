"""Tokenization throughput per core: MB/s of UTF-8 text into packed shards, through the tokenize step's code.

Run: `python benchmarks/bench_tokenize.py [--docs 4000] [--vocab 8192]`. HF tokenizers' own thread pool is turned
off (TOKENIZERS_PARALLELISM=false) so the figure is for one core; the pipeline gets its parallelism from one
process per shard. Reports BPE training time on the sample, `encode_batch` alone, and the step's run stage
(encode + EOS + ShardWriter to disk).
"""

from __future__ import annotations

import os

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers is imported

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from data_pipeline.document import Document
    from data_pipeline.steps.base import TaskContext
    from data_pipeline.steps.tokenize import Tokenize
    from data_pipeline.synthetic import generate_clean_documents
    from data_pipeline.tokenizer import train_bpe

    texts = generate_clean_documents(args.docs, seed=0)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    start = time.perf_counter()
    tokenizer = train_bpe(texts, args.vocab)
    train_s = time.perf_counter() - start
    tokenizer.encode_special_tokens = True

    encode_s, step_s = float("inf"), float("inf")
    n_tokens = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer.save(str(work / "tokenizer.json"))
        docs = [Document(str(i), t) for i, t in enumerate(texts)]
        for _ in range(args.repeats):
            start = time.perf_counter()
            encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
            encode_s = min(encode_s, time.perf_counter() - start)
            n_tokens = sum(len(e.ids) for e in encodings)
            step = Tokenize(vocab_size=args.vocab).bind(TaskContext(work_dir=work, output_dir=work / "tokens"))
            start = time.perf_counter()
            for _ in step.run(iter(docs), 0, 1):
                pass
            step_s = min(step_s, time.perf_counter() - start)
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "load_avg_1m": os.getloadavg()[0],
                "docs": len(texts),
                "megabytes": round(megabytes, 3),
                "vocab_size": tokenizer.get_vocab_size(),
                "tokens": n_tokens,
                "bytes_per_token": round(megabytes * 1e6 / n_tokens, 3),
                "train_s": round(train_s, 3),
                "encode_batch_mb_per_s": round(megabytes / encode_s, 3),
                "tokenize_step_mb_per_s": round(megabytes / step_s, 3),
                "tokenize_step_tokens_per_s": round(n_tokens / step_s),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
