"""Tokenize documents into packed token shards, training the byte-level BPE first unless one is given.

Stages:
  sample (per shard)  note which of this shard's documents are its `sample_docs` with the smallest hash of their
                      id (their row numbers: the texts stay in the step's input, written once);
  train (reduce)      keep the `sample_docs` smallest overall, read their texts back from the input shards and
                      train on them in hash order, or load the given tokenizer.json; save it next to the shards
                      (<output>/tokens/tokenizer.json, for the trainer and for the run stage);
                      it also collects the run's decontamination record (data_pipeline/decontamination.py), since
                      every earlier step has finished by then;
  run (per shard)     encode the shard in batches into <output>/tokens/shard-RRRRR with an end-of-document token
                      after every document (formats.ShardWriter: atomic, header last), the decontamination
                      record in every header.
Sampling by a hash of the id (a bottom-k sample) rather than by position makes the sample, and therefore the
tokenizer, the same however the corpus is split into shards.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from data_pipeline.decontamination import collect_record
from data_pipeline.document import Document
from data_pipeline.formats import NO_SOURCE, ShardWriter
from data_pipeline.steps.base import Stage, Step
from data_pipeline.tokenizer import (
    DEFAULT_EOS,
    TOKENIZER_FILE,
    TokenizerInfo,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)

DECONTAMINATION_FILE = "decontamination.json"  # in the work dir: the record the train stage collected (or null)


def _sample_key(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest(), "big")


class Tokenize(Step):
    name = "tokenize"
    writes_documents = False

    def __init__(
        self,
        tokenizer: Optional[str] = None,
        vocab_size: int = 32768,
        special_tokens: Sequence[str] = (DEFAULT_EOS,),
        eos_token: str = DEFAULT_EOS,
        min_frequency: int = 2,
        sample_docs: int = 50_000,
        batch_size: int = 512,
    ) -> None:
        super().__init__()
        special_tokens = list(special_tokens)
        if tokenizer is None and eos_token not in special_tokens:
            raise ValueError(
                f"tokenize: eos_token {eos_token!r} is not in special_tokens {special_tokens}: add it there"
            )
        if tokenizer is not None and not Path(tokenizer).is_file():
            raise ValueError(
                f"tokenize: tokenizer={tokenizer}: no such tokenizer.json (fix the path, or unset it to train one)"
            )
        for key, value in (("vocab_size", vocab_size), ("sample_docs", sample_docs), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"tokenize: {key}={value} must be >= 1")
        self.tokenizer_path = tokenizer
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens
        self.eos_token = eos_token
        self.min_frequency = min_frequency
        self.sample_docs = sample_docs
        self.batch_size = batch_size

    def stages(self) -> list[Stage]:
        return [Stage("sample", self.sample), Stage("train", self.train, per_shard=False), Stage("run", self.run)]

    @property
    def tokens_dir(self) -> Path:
        return self.context.output_dir or self.context.work_dir / "tokens"

    # ------------------------------------------------------------------ stages
    def sample(self, documents: Iterable[Document], rank: int, world_size: int) -> None:
        if self.tokenizer_path is not None:
            return
        rows = ((_sample_key(doc.id), doc.id, row) for row, doc in enumerate(documents))
        chosen = heapq.nsmallest(self.sample_docs, rows)
        self.context.write_atomic(f"sample-{rank:05d}.json", json.dumps(chosen).encode("utf-8"))

    def train(self, world_size: int) -> None:
        if self.tokenizer_path is not None:
            tokenizer = load_tokenizer(self.tokenizer_path)
        else:
            shards = (
                ((key, doc_id, rank, row) for key, doc_id, row in json.loads(self.sample_path(rank).read_text()))
                for rank in range(world_size)
            )
            chosen = heapq.nsmallest(self.sample_docs, (entry for rows in shards for entry in rows))
            if not chosen:
                raise ValueError("tokenize: no documents reached the tokenize step, so there is nothing to train on")
            texts = self._sample_texts(chosen)
            tokenizer = train_bpe(
                (texts[rank, row] for _, _, rank, row in chosen),
                self.vocab_size,
                self.special_tokens,
                self.min_frequency,
            )
        info = TokenizerInfo.of(tokenizer, self.eos_token)  # fails early when the EOS token is missing
        save_tokenizer(tokenizer, self.tokens_dir / TOKENIZER_FILE)
        self.context.write_atomic("tokenizer_info.json", json.dumps(info.__dict__).encode())
        record = collect_record(self.context.run_root, world_size)
        self.context.write_atomic(DECONTAMINATION_FILE, json.dumps(record).encode())

    def sample_path(self, rank: int) -> Path:
        return self.context.work_path(f"sample-{rank:05d}.json")

    def _sample_texts(self, chosen: list[tuple[int, str, int, int]]) -> dict[tuple[int, int], str]:
        """The texts of the chosen rows, read back from the input shards the sample stage numbered."""
        if self.context.input_documents is None:
            raise RuntimeError("tokenize: the train stage needs the executor's input_documents to read its sample")
        wanted: dict[int, dict[int, str]] = {}
        for _, doc_id, rank, row in chosen:
            wanted.setdefault(rank, {})[row] = doc_id
        texts: dict[tuple[int, int], str] = {}
        for rank, rows in sorted(wanted.items()):
            last = max(rows)
            for row, doc in enumerate(self.context.input_documents(rank)):
                if row in rows:
                    if doc.id != rows[row]:
                        raise RuntimeError(
                            f"tokenize: input shard {rank} row {row} is {doc.id!r} but the sample stage chose "
                            f"{rows[row]!r} there; the shard changed between stages: delete "
                            f"{self.sample_path(rank)} and rerun"
                        )
                    texts[rank, row] = doc.text
                if row == last:
                    break
            missing = [row for row in rows if (rank, row) not in texts]
            if missing:
                raise RuntimeError(
                    f"tokenize: input shard {rank} ended before row {min(missing)} the sample stage chose; the shard "
                    f"changed between stages: delete {self.sample_path(rank)} and rerun"
                )
        return texts

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        tokenizer = load_tokenizer(self.tokens_dir / TOKENIZER_FILE)
        tokenizer.encode_special_tokens = True  # "<|endoftext|>" inside a text is text, not a document boundary
        info = TokenizerInfo.of(tokenizer, self.eos_token)
        record_path = self.context.work_path(DECONTAMINATION_FILE)
        decontamination = json.loads(record_path.read_text()) if record_path.is_file() else None
        sources: Counter = Counter()
        documents = iter(documents)
        with ShardWriter(
            self.tokens_dir,
            f"shard-{rank:05d}",
            vocab_size=info.vocab_size,
            eos_id=info.eos_id,
            tokenizer_id=info.id,
            sources=None,
            decontamination=decontamination,
        ) as writer:
            while batch := list(islice(documents, self.batch_size)):
                # encode_batch_fast: ids without character offsets, which nothing here uses (~1.3x faster)
                encodings = tokenizer.encode_batch_fast([d.text for d in batch], add_special_tokens=False)
                for doc, encoding in zip(batch, encodings):
                    # The document's source (the mix step's key) goes into the shard per document, so the trainer
                    # can report a held-out loss per source of the mixed data.
                    source = doc.metadata.get("source")
                    writer.add_document(encoding.ids + [info.eos_id], None if source is None else str(source))
                    self.context.count("tokens", len(encoding.ids) + 1)
                    sources[NO_SOURCE if source is None else str(source)] += 1
                    yield doc
            writer.sources = {"documents": dict(sorted(sources.items()))}
