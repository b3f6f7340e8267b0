"""Every supported input format reads to the same documents, and malformed rows of every kind are quarantined
with their reason, so kept + excluded + quarantined = input on any input."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard


from data_pipeline.cli import main
from data_pipeline.io import InputSpec, Quarantined, read_input_shard, read_shard
from data_pipeline.synthetic import generate_clean_documents

GOOD = generate_clean_documents(6, seed=11)


def malformed_lines() -> list[bytes]:
    return [
        json.dumps({"id": "good-0", "text": GOOD[0]}).encode(),
        b'{"id": "broken", "text": "unterminated',  # invalid JSON
        b'{"id": "latin1", "text": "caf\xe9"}',  # invalid UTF-8
        json.dumps({"id": "no-text", "body": GOOD[1]}).encode(),  # missing text field
        json.dumps({"id": "number", "text": 42}).encode(),  # text not a string
        json.dumps(["a", "list"]).encode(),  # not an object
        json.dumps({"id": "empty", "text": "   \n "}).encode(),  # empty document
        b"",  # empty line
        json.dumps({"id": "huge", "text": "word " * 3000}).encode(),  # larger than max_doc_chars below
        json.dumps({"text": GOOD[2]}).encode(),  # no id: assigned from file and line
        json.dumps({"id": "ctrl", "text": "\x00\x07" + GOOD[3]}).encode(),  # control chars: normalised, kept
    ]


def test_malformed_rows_are_quarantined_with_reasons(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"\n".join(malformed_lines()) + b"\n")
    output = tmp_path / "out"
    rc = main(["normalize", f"input={src}", f"output={output}", "tasks=2", "max_doc_chars=10000"])
    assert rc == 0
    stats = json.loads((output / "stats" / "normalize.json").read_text())
    assert stats["docs_in"] == 11
    assert stats["docs_kept"] + stats["docs_excluded"] + stats["docs_quarantined"] == stats["docs_in"]
    reasons = sorted(
        json.loads(line)["reason"].split(":")[0]
        for path in (output / "quarantine" / "normalize").glob("*.jsonl")
        for line in path.read_text().splitlines()
    )
    assert reasons == sorted(
        ["invalid_json", "invalid_utf8", "missing_field", "text_not_string", "not_an_object", "empty_document",
         "empty_line", "too_large"]
    )
    kept = {doc.id: doc for path in (output / "normalize").glob("shard-*") for doc in read_shard(path)}
    assert set(kept) == {"good-0", "bad.jsonl:9", "ctrl"}
    assert kept["ctrl"].text == GOOD[3]
    assert (output / "report.md").exists() and (output / "funnel.png").stat().st_size > 1000


def write_formats(directory: Path, records: list[dict]) -> dict[str, Path]:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    (directory / "plain.jsonl").write_bytes(lines)
    (directory / "gz.jsonl.gz").write_bytes(gzip.compress(lines))
    (directory / "zst.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist(records), directory / "table.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(directory / "saved"))
    return {
        "jsonl": directory / "plain.jsonl",
        "gz": directory / "gz.jsonl.gz",
        "zst": directory / "zst.jsonl.zst",
        "parquet": directory / "table.parquet",
        "saved": directory / "saved",
    }


def test_all_input_formats_read_the_same_documents(tmp_path):
    records = [{"doc_id": f"d{i}", "body": text, "source": "web"} for i, text in enumerate(GOOD)]
    inputs = write_formats(tmp_path / "in", records)
    for name, path in inputs.items():
        spec = InputSpec(str(path), text_key="body", id_key="doc_id")
        rows = [row for rank in range(2) for row in read_input_shard(spec, rank, 2)]
        assert not any(isinstance(r, Quarantined) for r in rows), name
        assert sorted((r.id, r.text, r.metadata["source"]) for r in rows) == sorted(
            (r["doc_id"], r["body"], "web") for r in records
        ), name
    txt_dir = tmp_path / "txt"
    txt_dir.mkdir()
    for i, text in enumerate(GOOD[:3]):
        (txt_dir / f"{i}.txt").write_text(text)
    rows = list(read_input_shard(InputSpec(str(txt_dir)), 0, 1))
    assert [(r.id, r.text) for r in rows] == [(f"{i}.txt", GOOD[i]) for i in range(3)]


def test_parquet_output_and_missing_input_error(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(GOOD)))
    assert main(["heuristics", f"input={src}", f"output={tmp_path / 'out'}", "tasks=2", "output_format=parquet"]) == 0
    shards = sorted((tmp_path / "out" / "heuristics").glob("shard-*.parquet"))
    assert len(shards) == 2 and sum(len(list(read_shard(s))) for s in shards) == len(GOOD)
    assert main(["normalize", f"input={tmp_path / 'nope'}", f"output={tmp_path / 'o2'}"]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(Exception, match="tsks"):
        from data_pipeline.cli import compose_config

        compose_config([f"input={src}", "output=x", "tsks=3"])
