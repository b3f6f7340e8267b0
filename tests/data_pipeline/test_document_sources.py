"""Per-document sources in packed shards: written by the tokenize step from each document's `source` field (the
key the mix step mixes by), read back per token by the trainer for held-out losses per source, and refused with
the file named when the record is truncated or inconsistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.executors.base import PipelinePlan, StepSpec
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.formats import (
    NO_SOURCE,
    SOURCES_SUFFIX,
    PackedDataset,
    PackedShard,
    ShardFormatError,
    ShardWriter,
)
from data_pipeline.readers import InputSpec


def _write(directory: Path, stem: str, documents: list[tuple[list[int], str | None]]) -> Path:
    with ShardWriter(directory, stem, vocab_size=100, eos_id=0, tokenizer_id="t") as writer:
        for tokens, source in documents:
            writer.add_document(tokens, source)
    return directory / f"{stem}.json"


def test_each_token_reads_the_source_of_its_document_across_shards(tmp_path):
    _write(tmp_path, "a", [([1, 2, 0], "web"), ([3, 0], "code"), ([4, 5, 6, 0], None)])
    _write(tmp_path, "b", [([7, 0], "web")])
    dataset = PackedDataset(tmp_path)
    assert dataset.source_names == sorted(["web", "code", NO_SOURCE])
    index = {name: i for i, name in enumerate(dataset.source_names)}
    want = ["web"] * 3 + ["code"] * 2 + [NO_SOURCE] * 4 + ["web"] * 2
    assert dataset.read_sources(0, dataset.n_tokens).tolist() == [index[n] for n in want]
    assert dataset.read_sources(4, 3).tolist() == [index[n] for n in want[4:7]]  # a window across documents
    assert dataset.read_sources(8, 3).tolist() == [index[n] for n in want[8:11]]  # and across shards
    assert dataset.read(0, dataset.n_tokens).tolist() == [1, 2, 0, 3, 0, 4, 5, 6, 0, 7, 0]


def test_shards_without_sources_keep_the_old_layout_and_count_as_no_source(tmp_path):
    _write(tmp_path, "a", [([1, 0], None)])
    assert not (tmp_path / f"a{SOURCES_SUFFIX}").exists()
    assert "document_sources" not in json.loads((tmp_path / "a.json").read_text())
    assert PackedDataset(tmp_path).source_names == []
    with pytest.raises(ValueError, match="record no per-document sources"):
        PackedDataset(tmp_path).read_sources(0, 1)
    _write(tmp_path, "b", [([2, 0], "web")])  # one shard with sources: the other's documents are NO_SOURCE
    dataset = PackedDataset(tmp_path)
    assert dataset.read_sources(0, 4).tolist() == [dataset.source_names.index(n) for n in [NO_SOURCE] * 2 + ["web"] * 2]


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-2]), "truncated or corrupt"),
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(np.array([0, 5], dtype="<u2").tobytes()), "source id 5"),
    ],
    ids=["truncated", "missing", "id_out_of_range"],
)
def test_a_damaged_source_record_is_refused_naming_the_file(tmp_path, damage, message):
    header = _write(tmp_path, "a", [([1, 0], "web"), ([2, 0], "code")])
    damage(tmp_path / f"a{SOURCES_SUFFIX}")
    with pytest.raises(ShardFormatError, match=message) as error:
        PackedShard.open(header)
    assert f"a{SOURCES_SUFFIX}" in str(error.value)


def test_a_killed_writer_leaves_no_source_record(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "a", vocab_size=100, eos_id=0, tokenizer_id="t") as writer:
            writer.add_document([1, 0], "web")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_the_tokenize_step_records_each_documents_source(tmp_path):
    records = [
        {
            "id": f"d{i}",
            "text": f"document number {i} " * (1 + i % 3),
            **({"source": ["web", "code"][i % 2]} if i % 5 else {}),
        }
        for i in range(40)
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    plan = PipelinePlan(
        input=InputSpec(path=str(path)),
        output=str(tmp_path / "out"),
        steps=[StepSpec("tokenize", {"vocab_size": 300, "batch_size": 8})],
        tasks=2,
    )
    LocalExecutor(plan, workers=1, progress=lambda _: None).run()
    dataset = PackedDataset(tmp_path / "out" / "tokens")
    assert dataset.source_names == sorted(["web", "code", NO_SOURCE])
    from data_pipeline.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tmp_path / "out" / "tokens" / "tokenizer.json")
    by_text = {r["text"]: r.get("source", NO_SOURCE) for r in records}
    start = 0
    for document in dataset.documents():
        text = tokenizer.decode(document[:-1].tolist())
        sources = set(dataset.read_sources(start, len(document)).tolist())
        assert sources == {dataset.source_names.index(by_text[text])}, text
        start += len(document)
    assert start == dataset.n_tokens
