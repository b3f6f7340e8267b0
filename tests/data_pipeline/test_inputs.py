"""Every supported input format reads to the same documents, and malformed rows of every kind are quarantined
with their reason and 1-based line, so kept + excluded + quarantined = input on any input; broken compressed and
Parquet files give their readable rows plus one record saying where they broke."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest
import zstandard

from data_pipeline.cli import main
from data_pipeline.readers import InputSpec, Quarantined, read_input_shard
from data_pipeline.shards import read_shard
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
        json.dumps({"id": "ctrl", "text": "\x07\x1b" + GOOD[3]}).encode(),  # control chars: normalised, kept
        json.dumps({"id": "nul", "text": "\x00" + GOOD[3]}).encode(),  # NUL: quarantined
        json.dumps({"id": "surrogate", "text": GOOD[4], "meta": {"title": "\udc80"}}).encode(),  # lone surrogate
    ]


def test_malformed_rows_are_quarantined_with_reasons(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b"\n".join(malformed_lines()) + b"\n")
    output = tmp_path / "out"
    rc = main(["normalize", f"input={src}", f"output={output}", "tasks=2", "max_doc_chars=10000"])
    assert rc == 0
    stats = json.loads((output / "stats" / "normalize.json").read_text())
    assert stats["docs_in"] == 13
    assert stats["docs_kept"] + stats["docs_excluded"] + stats["docs_quarantined"] == stats["docs_in"]
    records = sorted(
        (json.loads(line)["line"], json.loads(line)["reason"])
        for path in (output / "quarantine" / "normalize").glob("*.jsonl")
        for line in path.read_text().splitlines()
    )
    assert [(line, reason.split(" (")[0]) for line, reason in records] == [
        (2, "invalid_json:Unterminated string starting at"),
        (3, "invalid_utf8:text"),
        (4, "missing_field:text"),
        (5, "text_not_string:int"),
        (6, "not_an_object"),
        (7, "empty_document"),
        (8, "empty_line"),
        (9, "too_large:15000_chars"),
        (12, "nul_character:text"),
        (13, "lone_surrogate:meta.title"),
    ]
    kept = {doc.id: doc for path in (output / "normalize").glob("shard-*") for doc in read_shard(path)}
    assert set(kept) == {"good-0", "bad.jsonl:10", "ctrl"}
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


def first_failing_byte(compressed: bytes) -> int:
    """Oracle for a corrupt gzip: feed a fresh decoder one byte at a time until it raises."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for i in range(len(compressed)):
        try:
            decoder.decompress(compressed[i : i + 1])
        except zlib.error:
            return i
    raise AssertionError("the stream decoded without an error")


def read_all(path: Path) -> list:
    return list(read_input_shard(InputSpec(str(path)), 0, 1))


def test_broken_compressed_files_yield_readable_lines_and_one_record(tmp_path):
    records = [{"id": f"d{i}", "text": GOOD[i % len(GOOD)] + f" ({i})"} for i in range(3000)]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    gz, zst = gzip.compress(data, mtime=0), zstandard.ZstdCompressor().compress(data)
    corrupt = bytearray(gz)
    corrupt[len(gz) // 3] ^= 0x55
    cases = {
        "cut.jsonl.gz": (
            gz[: len(gz) // 2],
            zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(gz[: len(gz) // 2]),
            "compressed_stream_truncated",
            len(gz) // 2,
        ),
        "cut.jsonl.zst": (
            zst[: len(zst) // 2],
            zstandard.ZstdDecompressor().decompressobj().decompress(zst[: len(zst) // 2]),
            "compressed_stream_truncated",
            len(zst) // 2,
        ),
        "flip.jsonl.gz": (bytes(corrupt), None, "compressed_stream_corrupt", first_failing_byte(bytes(corrupt))),
        "tail.jsonl.gz": (gz + b"junk after the member", data, "trailing_garbage", len(gz)),
    }
    for name, (blob, readable, reason, offset) in cases.items():
        (tmp_path / name).write_bytes(blob)
        rows = read_all(tmp_path / name)
        *lines, last = rows
        assert isinstance(last, Quarantined) and last.reason.startswith(reason), (name, last)
        assert last.source == name and last.byte_offset == offset and last.line == len(lines) + 1, (name, last)
        if readable is not None:  # every complete line before the damage, nothing invented
            assert len(lines) == readable.count(b"\n"), name
            assert [r.id for r in lines] == [f"d{i}" for i in range(len(lines))], name
        assert len(lines) > 0 or name == "flip.jsonl.gz"
    # Concatenated members with zero padding (as `cat a.gz b.gz` and some writers produce) are one healthy file.
    (tmp_path / "two.jsonl.gz").write_bytes(gz + gz + b"\0" * 64)
    assert [r.id for r in read_all(tmp_path / "two.jsonl.gz")] == [r["id"] for r in records] * 2


def test_byte_order_mark_is_accepted(tmp_path):
    first = json.dumps({"id": "a", "text": GOOD[0]}).encode()
    second = json.dumps({"id": "b", "text": GOOD[1]}).encode()
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + first + b"\n" + b"\xef\xbb\xbf" + second + b"\n")
    assert [(r.id, r.text) for r in read_all(tmp_path / "bom.jsonl")] == [("a", GOOD[0]), ("b", GOOD[1])]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + GOOD[2].encode())
    assert [r.text for r in read_all(tmp_path / "bom.txt")] == [GOOD[2]]


def test_parquet_output_keeps_metadata_of_mixed_types(tmp_path):
    records = [
        {"id": "a", "text": GOOD[0], "score": 1, "tags": ["x"]},
        {"id": "b", "text": GOOD[1], "score": "high", "tags": "y"},
    ]
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["normalize", f"input={src}", f"output={tmp_path / 'out'}", "tasks=1", "output_format=parquet"]) == 0
    docs = list(read_shard(tmp_path / "out" / "normalize" / "shard-00000.parquet"))
    assert [(d.id, d.metadata["score"], d.metadata["tags"]) for d in docs] == [("a", 1, ["x"]), ("b", "high", "y")]


def test_corrupt_parquet_input_is_quarantined(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"id": "a", "text": GOOD[0]}]), tmp_path / "whole.parquet")
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    rows = read_all(tmp_path / "cut.parquet")
    assert len(rows) == 1 and rows[0].reason.startswith("corrupt_parquet:") and rows[0].line == 1
