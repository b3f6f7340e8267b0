"""A corpus whose batch at one step is planted: the launcher tests' arithmetic shards with every sample of that
step's global batch replaced by one token repeated, a batch a model trained on the rest has never seen. The
samples of the step are found with launcher.data.TokenBatches itself (the order the trainer reads), so nothing in
the trainer knows about the plant."""

from __future__ import annotations

from pathlib import Path

PLANTED_TOKEN = 7


def planted_batch_shards(source: Path, target: Path, *, step: int, global_batch: int, seq_len: int, seed: int) -> Path:
    """Write `source`'s token stream into `target` as one shard, with the windows read at `step` (1-based) by a run
    of `global_batch` sequences of `seq_len` tokens and data seed `seed` (data=packed's val_fraction) replaced by
    PLANTED_TOKEN. Returns `target`."""
    from data_pipeline.formats import PackedDataset, ShardWriter
    from launcher.data import TokenBatches

    dataset = PackedDataset(source)
    val_fraction = 0.01  # data=packed's (configs/data/packed.yaml)
    batches = TokenBatches(
        dataset,
        seq_len=seq_len,
        global_batch=global_batch,
        dp_rank=0,
        dp_degree=1,
        seed=seed,
        val_fraction=val_fraction,
    )
    for _ in range(step):
        batches.next_batch()
    stream = dataset.read(0, dataset.n_tokens)
    for window in batches.last_read[1]:
        stream[int(window) * seq_len : int(window) * seq_len + seq_len + 1] = PLANTED_TOKEN
    with ShardWriter(target, "planted", vocab_size=dataset.vocab_size, eos_id=0, tokenizer_id="test-planted") as w:
        w.add_document(stream)
    return target
