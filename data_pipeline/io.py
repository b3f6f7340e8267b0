"""Reading raw inputs into Documents (with quarantine of bad rows) and writing shards atomically.

Raw inputs are messy, so the reader never raises on a bad row: it yields a `Quarantined` record with the
reason, and the executor writes it to the quarantine output. Every reader streams, so a shard never has to fit
in memory (except Parquet output, which is written in one go per shard).

Inputs are split into `tasks` shards deterministically: with at least as many files as tasks, whole files go
to tasks round-robin; otherwise every task reads all files and keeps every `tasks`-th row. The split depends
only on the input and `tasks`, never on the number of worker processes, so results do not depend on workers.
"""
from __future__ import annotations

import glob
import gzip
import io as _io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

from data_pipeline.document import Document

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson.gz")
TEXT_SUFFIXES = (".txt", ".md")
PARQUET_SUFFIXES = (".parquet",)
WARC_SUFFIXES = (".warc", ".warc.gz")  # HTML responses, one document each (data_pipeline/extraction.py)
OUTPUT_FORMATS = ("jsonl", "parquet")
RAW_PREVIEW_CHARS = 2000


@dataclass
class Quarantined:
    """A row that could not become a Document: why, and where it came from."""

    reason: str
    source: str
    line: int
    raw: str

    def to_record(self) -> dict[str, Any]:
        return {"reason": self.reason, "source": self.source, "line": self.line, "raw": self.raw}


Row = Union[Document, Quarantined]


@dataclass
class InputSpec:
    path: str
    text_key: str = "text"
    id_key: str = "id"
    split: str = "train"
    max_doc_chars: int = 1_000_000


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists()
    )


def _is_supported_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(JSONL_SUFFIXES + TEXT_SUFFIXES + PARQUET_SUFFIXES + WARC_SUFFIXES)


def list_input_files(path: str) -> list[Path]:
    """Files of an input spec (a file, a directory searched recursively, or a glob), sorted for determinism."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and _is_supported_file(f) and not f.name.startswith("."))
    else:
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).is_file())
    return files


def _open_binary(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return _io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _record_to_row(record: Any, spec: InputSpec, source: str, line: int, raw: str) -> Row:
    if not isinstance(record, dict):
        return Quarantined("not_an_object", source, line, raw[:RAW_PREVIEW_CHARS])
    if spec.text_key not in record:
        return Quarantined(f"missing_field:{spec.text_key}", source, line, raw[:RAW_PREVIEW_CHARS])
    text = record[spec.text_key]
    if not isinstance(text, str):
        return Quarantined(f"text_not_string:{type(text).__name__}", source, line, raw[:RAW_PREVIEW_CHARS])
    if not text.strip():
        return Quarantined("empty_document", source, line, raw[:RAW_PREVIEW_CHARS])
    if len(text) > spec.max_doc_chars:
        return Quarantined(f"too_large:{len(text)}_chars", source, line, raw[:RAW_PREVIEW_CHARS])
    doc_id = record.get(spec.id_key)
    metadata = {k: v for k, v in record.items() if k not in (spec.text_key, spec.id_key)}
    return Document(id=str(doc_id) if doc_id is not None else f"{source}:{line}", text=text, metadata=metadata)


def _jsonl_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    with _open_binary(path) as raw_file:
        for line_no, raw_line in enumerate(raw_file):
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Quarantined(f"invalid_utf8:{exc.reason}", source, line_no, raw_line[:RAW_PREVIEW_CHARS].decode("utf-8", "replace"))
                continue
            if not line.strip():
                yield Quarantined("empty_line", source, line_no, "")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Quarantined(f"invalid_json:{exc.msg}", source, line_no, line[:RAW_PREVIEW_CHARS])
                continue
            yield _record_to_row(record, spec, source, line_no, line)


def _text_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield Quarantined(f"invalid_utf8:{exc.reason}", source, 0, data[:RAW_PREVIEW_CHARS].decode("utf-8", "replace"))
        return
    yield _record_to_row({spec.text_key: text, spec.id_key: source}, spec, source, 0, text)


def _parquet_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    line = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield _record_to_row(record, spec, source, line, json.dumps(record, default=str)[:RAW_PREVIEW_CHARS])
            line += 1


def _file_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return _parquet_rows(path, spec, source)
    if name.endswith(TEXT_SUFFIXES):
        return _text_rows(path, spec, source)
    if name.endswith(WARC_SUFFIXES):
        from data_pipeline.extraction import warc_rows

        return warc_rows(path, source, spec.max_doc_chars)
    return _jsonl_rows(path, spec, source)


def _dataset_rows(dataset: Iterable[dict], spec: InputSpec, source: str) -> Iterator[Row]:
    for line, record in enumerate(dataset):
        yield _record_to_row(record, spec, source, line, json.dumps(record, default=str)[:RAW_PREVIEW_CHARS])


def _load_dataset(spec: InputSpec):
    """A `datasets` dataset saved to disk, or a hub dataset name (streamed) when the path does not exist."""
    import datasets

    path = Path(spec.path)
    if path.exists():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if spec.split not in dataset:
                raise ValueError(f"input={spec.path}: no split {spec.split!r} (has {list(dataset)}); set input_split=")
            dataset = dataset[spec.split]
        return dataset
    try:
        return datasets.load_dataset(spec.path, split=spec.split, streaming=True)
    except Exception as exc:  # offline, unknown name, gated...: say both readings of the input
        raise ValueError(
            f"input={spec.path}: not a local file or directory, and loading it as a hub dataset failed ({exc})"
        ) from exc


def describe_input(spec: InputSpec) -> str:
    """Fail early with a clear message when the input cannot be found; return what kind of input it is."""
    path = Path(spec.path)
    if _is_saved_dataset(path):
        return "saved_dataset"
    files = list_input_files(spec.path)
    if files:
        return "files"
    if path.exists():
        raise ValueError(f"input={spec.path}: no readable files (expected .jsonl[.gz|.zst], .parquet, .txt, or a saved dataset)")
    if not spec.path.startswith(("/", ".", "~")) and not any(c in spec.path for c in "*?["):
        return "hub"  # "owner/name" or "name": tried on the hub, with an error naming both readings if absent
    raise ValueError(f"input={spec.path}: no such file, directory or glob match")


def read_input_shard(spec: InputSpec, rank: int, tasks: int) -> Iterator[Row]:
    """Rows of shard `rank` of `tasks` of a raw input (see the module docstring for the split)."""
    kind = describe_input(spec)
    if kind in ("saved_dataset", "hub"):
        rows = _dataset_rows(_load_dataset(spec), spec, Path(spec.path).name or spec.path)
        for i, row in enumerate(rows):
            if i % tasks == rank:
                yield row
        return
    files = list_input_files(spec.path)
    root = Path(spec.path) if Path(spec.path).is_dir() else None

    def source_name(f: Path) -> str:
        return str(f.relative_to(root)) if root is not None else f.name

    if len(files) >= tasks:
        for f in files[rank::tasks]:
            yield from _file_rows(f, spec, source_name(f))
        return
    index = 0
    for f in files:
        for row in _file_rows(f, spec, source_name(f)):
            if index % tasks == rank:
                yield row
            index += 1


# ---------------------------------------------------------------------------------------------------- shards
def shard_name(rank: int, fmt: str) -> str:
    return f"shard-{rank:05d}.{fmt}"


def read_shard(path: Path) -> Iterator[Document]:
    """Documents of a shard written by `ShardWriterAtomic` (our own output: well-formed by construction)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield Document.from_record(record)
    else:
        with open(path, "rb") as f:
            for line in f:
                yield Document.from_record(json.loads(line))


def find_shard(directory: Path, rank: int) -> Optional[Path]:
    for fmt in OUTPUT_FORMATS:
        candidate = directory / shard_name(rank, fmt)
        if candidate.exists():
            return candidate
    return None


class AtomicRecordWriter:
    """Records to `<final>` via a temporary file; `commit()` renames into place, `discard()` removes it.

    JSONL streams to disk; Parquet is buffered and written at commit (one row group per shard).
    """

    def __init__(self, final: Path, fmt: str = "jsonl") -> None:
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_format={fmt!r} is not one of {OUTPUT_FORMATS}")
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.tmp = self.final.with_name(f".{self.final.name}.tmp.{os.getpid()}")
        self.count = 0
        self._rows: list[dict] = []
        self._file = open(self.tmp, "w", encoding="utf-8") if fmt == "jsonl" else None

    def write(self, record: dict) -> None:
        self.count += 1
        if self._file is not None:
            self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        else:
            self._rows.append(record)

    def commit(self) -> Path:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(self._rows) if self._rows else pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
            pq.write_table(table, self.tmp)
        os.replace(self.tmp, self.final)
        return self.final

    def discard(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files left by a killed task (never read; removed so they do not accumulate)."""
    if directory.is_dir():
        for tmp in directory.rglob(".*.tmp.*"):
            tmp.unlink(missing_ok=True)
