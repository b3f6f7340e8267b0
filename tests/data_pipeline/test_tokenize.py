"""Tokenizer training/loading and the tokenize step: exact round trip, EOS framing, packed shards, determinism."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.executors.base import PipelinePlan, StepSpec
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.formats import PackedDataset, PackedShard
from data_pipeline.readers import InputSpec
from data_pipeline.steps import build_step
from data_pipeline.steps.normalize import normalize_text
from data_pipeline.tokenizer import DEFAULT_EOS, TokenizerInfo, load_tokenizer, save_tokenizer, tokenizer_id, train_bpe

WORDS = "the of and river stone quiet lantern north harbour déjà vu naïve 東京 данные ünïcödé".split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        lines = [" ".join(rng.choices(WORDS, k=rng.randint(3, 15))) for _ in range(rng.randint(1, 4))]
        text = "\n".join(lines)
        if i % 17 == 0:
            text += f" {DEFAULT_EOS} literal marker, tabs\tand emoji 🙂"
        texts.append(text)
    return texts


def test_bpe_round_trips_normalised_text_exactly():
    raw = ["  Cafe\u0301 \u200bzero-width\r\nnext line\t\ttab  ", "emoji 🙂 and 東京, " + DEFAULT_EOS, ""]
    raw += corpus(50)
    texts = [normalize_text(t) for t in raw]
    tokenizer = train_bpe(texts, vocab_size=400)
    tokenizer.encode_special_tokens = True
    info = TokenizerInfo.of(tokenizer)
    assert info.eos_id == 0 and info.vocab_size <= 400
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert info.eos_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert "Café" in texts[0]  # NFC composed by normalize


def test_tokenizer_training_is_deterministic_and_id_follows_content(tmp_path):
    texts = corpus(200)
    a, b = train_bpe(texts, 320), train_bpe(texts, 320)
    assert tokenizer_id(a) == tokenizer_id(b)
    assert tokenizer_id(train_bpe(texts, 300)) != tokenizer_id(a)
    path = save_tokenizer(a, tmp_path / "tokenizer.json")
    assert tokenizer_id(load_tokenizer(path)) == tokenizer_id(a)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(texts, 100)
    with pytest.raises(ValueError, match="end-of-document"):
        TokenizerInfo.of(a, eos_token="<eos>")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_step_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="eos_token"):
        build_step("tokenize", {"special_tokens": ["<pad>"]})
    with pytest.raises(ValueError, match="no such tokenizer"):
        build_step("tokenize", {"tokenizer": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="vocab_size"):
        build_step("tokenize", {"vocab_size": 0})


def _run(input_file: Path, output: Path, workers: int, tasks: int = 3, **params) -> Path:
    plan = PipelinePlan(
        input=InputSpec(path=str(input_file)),
        output=str(output),
        steps=[StepSpec("tokenize", {"vocab_size": 400, "batch_size": 16, **params})],
        tasks=tasks,
    )
    LocalExecutor(plan, workers=workers, progress=lambda _: None).run()
    return output / "tokens"


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def jsonl_input(tmp_path_factory) -> tuple[Path, list[dict]]:
    records = [{"id": f"doc-{i:04d}", "text": text} for i, text in enumerate(corpus(240, seed=1))]
    path = tmp_path_factory.mktemp("input") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path, records


def test_packed_shards_hold_every_document_followed_by_eos(tmp_path, jsonl_input):
    path, records = jsonl_input
    tokens = _run(path, tmp_path / "out", workers=1)
    shards = [PackedShard.open(h) for h in sorted(tokens.glob("shard-*.json"))]
    assert len(shards) == 3 and sum(s.n_documents for s in shards) == len(records)
    tokenizer = load_tokenizer(tokens / "tokenizer.json")
    assert {s.header["tokenizer"]["id"] for s in shards} == {tokenizer_id(tokenizer)}
    eos = shards[0].header["tokenizer"]["eos_id"]
    assert eos == tokenizer.token_to_id(DEFAULT_EOS)
    decoded = []
    for shard in shards:
        assert int(np.sum(np.asarray(shard.tokens) == eos)) == shard.n_documents
        for i in range(shard.n_documents):
            doc = shard.document(i)
            assert doc[-1] == eos and eos not in doc[:-1]
            decoded.append(tokenizer.decode(doc[:-1].tolist(), skip_special_tokens=False))
    assert sorted(decoded) == sorted(r["text"] for r in records)
    stats = json.loads((tmp_path / "out" / "stats" / "tokenize.json").read_text())
    assert stats["counters"]["tokens"] == sum(s.n_tokens for s in shards)


def test_trainer_reads_the_tokens_directory_with_its_tokenizer(tmp_path, jsonl_input):
    """What launcher/data.py does: PackedDataset over <output>/tokens, tokenizer.json beside the shards."""
    path, records = jsonl_input
    tokens = _run(path, tmp_path / "out", workers=1)
    dataset = PackedDataset(tokens)
    assert dataset.n_documents == len(records)
    tokenizer = load_tokenizer(tokens / "tokenizer.json")
    assert dataset.tokenizer["id"] == tokenizer_id(tokenizer)
    stream = dataset.read(0, dataset.n_tokens)
    assert int(np.sum(stream == dataset.tokenizer["eos_id"])) == len(records)


def test_parallel_equals_serial_and_a_given_tokenizer_reproduces_the_run(tmp_path, jsonl_input):
    path, _ = jsonl_input
    serial = _run(path, tmp_path / "serial", workers=1)
    parallel = _run(path, tmp_path / "parallel", workers=2)
    assert _digest(serial) == _digest(parallel)
    assert len([p for p in serial.glob("shard-*.tokens")]) == 3
    # The sample (bottom-k by id hash) does not depend on the sharding: one shard trains the same tokenizer.
    one_shard = _run(path, tmp_path / "one", workers=1, tasks=1)
    assert _digest(one_shard)["tokenizer.json"] == _digest(serial)["tokenizer.json"]
    reloaded = _run(path, tmp_path / "given", workers=1, tokenizer=str(serial / "tokenizer.json"))
    assert _digest(reloaded) == _digest(serial)
