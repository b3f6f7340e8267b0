"""The pipeline's own intermediate shards: their names, reading them back, writing them atomically, and sweeping the
temporary files a killed task left.

Apart from data_pipeline/readers.py because these files are ours, not the user's: a reader of raw input has to
expect any damage and quarantine it, while a shard written here is well-formed by construction and is read back
without checks. Every file goes to a temporary name (`.<name>.tmp.<pid>`) and is renamed into place when
complete, so a killed task never leaves a file a rerun would trust. The packed token shards training reads are
another format, in data_pipeline/formats.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from data_pipeline.compressed import StreamDamage, read_lines
from data_pipeline.document import Document

OUTPUT_FORMATS = ("jsonl", "parquet")
# JSONL in zstd frames: the exclusion records, and the documents a streamed run writes only for a later phase to
# read (a dedup barrier's input), as datatrove compresses what its writers write. Prose shrinks ~4-5x for ~0.3 s of
# CPU per 100 MB at level 3; `zstdcat` reads them.
COMPRESSED_JSONL = "jsonl.zst"
ZSTD_LEVEL = 3


def shard_name(rank: int, fmt: str) -> str:
    return f"shard-{rank:05d}.{fmt}"


def read_shard(path: Path) -> Iterator[Document]:
    """Documents of a shard written by `ShardWriterAtomic` (our own output: well-formed by construction)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        json_columns = json.loads((parquet.schema_arrow.metadata or {}).get(JSON_COLUMNS_KEY, b"[]"))
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                for name in json_columns:
                    if record[name] is not None:
                        record[name] = json.loads(record[name])
                yield Document.from_record(record)
    else:
        for record in read_records(path):
            yield Document.from_record(record)


def read_records(path: Path) -> Iterator[dict]:
    """The records of a JSONL file the run wrote, plain or `.jsonl.zst` (documents, exclusion records)."""
    if not path.name.endswith(".zst"):
        with open(path, "rb") as f:
            for line in f:
                yield json.loads(line)
        return
    for line in read_lines(path):
        if isinstance(line, StreamDamage):
            raise ValueError(
                f"{path}: {line.reason} at compressed byte {line.byte_offset}; this file was written by the run and "
                f"is damaged: delete it and the step's markers (.markers/) to rerun the step"
            )
        yield json.loads(line)


def find_shard(directory: Path, rank: int) -> Optional[Path]:
    for fmt in OUTPUT_FORMATS + (COMPRESSED_JSONL,):
        candidate = directory / shard_name(rank, fmt)
        if candidate.exists():
            return candidate
    return None


class AtomicRecordWriter:
    """Records to `<final>` via a temporary file; `commit()` renames into place, `discard()` removes it.

    JSONL streams to disk (`jsonl.zst`: through a zstd compressor, a frame ended at each `flush_to_disk`); Parquet
    is buffered and written at commit (one row group per shard).
    """

    def __init__(self, final: Path, fmt: str = "jsonl") -> None:
        if fmt not in OUTPUT_FORMATS + (COMPRESSED_JSONL,):
            raise ValueError(f"output_format={fmt!r} is not one of {OUTPUT_FORMATS}")
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.tmp = self.final.with_name(f".{self.final.name}.tmp.{os.getpid()}")
        self.count = 0
        self._rows: list[dict] = []
        self._file = self._stream = None
        if fmt != "parquet":
            self._open("wb")

    def _open(self, mode: str) -> None:
        self._file = open(self.tmp, mode)
        self._stream = self._file
        self._unflushed = 0  # bytes given to the compressor since its last frame ended
        if self.fmt == COMPRESSED_JSONL:
            import zstandard

            self._stream = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(self._file, closefd=False)

    def write(self, record: dict) -> None:
        self.count += 1
        if self._stream is not None:
            line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
            self._unflushed += len(line)
            self._stream.write(line)
        else:
            self._rows.append(record)

    def flush_to_disk(self) -> int:
        """Everything written so far on disk (a compressed stream ends its frame: the file decodes whole); returns
        the file's size. A frame ends only where something was written since the last, so the frames, and the bytes,
        depend on the records and the flush points only."""
        if self._stream is not self._file and self._unflushed:
            import zstandard

            self._stream.flush(zstandard.FLUSH_FRAME)
        self._unflushed = 0
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def commit(self) -> Path:
        """Rename the finished file into place; on any failure (disk full, a row Parquet cannot hold) no
        temporary file is left behind."""
        try:
            if self._file is not None:
                self.flush_to_disk()
                self._file.close()
            else:
                import pyarrow.parquet as pq

                pq.write_table(_parquet_table(self._rows), self.tmp)
            os.replace(self.tmp, self.final)
        except BaseException:
            self.discard()
            raise
        return self.final

    def discard(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


JSON_COLUMNS_KEY = b"loom_json_columns"


def _parquet_table(rows: list[dict]):
    """Rows as an Arrow table. A metadata column whose values Arrow cannot hold in one type (an int in one row, a
    string in another) is stored as JSON text and named in the schema metadata, so `read_shard` restores it."""
    import pyarrow as pa

    if not rows:
        return pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    columns: dict[str, Any] = {}
    json_columns = []
    for name in dict.fromkeys(key for row in rows for key in row):
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array(
                [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values], pa.string()
            )
            json_columns.append(name)
    return pa.table(columns).replace_schema_metadata({JSON_COLUMNS_KEY: json.dumps(json_columns)})


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_FIRST_RANK_NUMBER = re.compile(r"(?<!\d)(\d{5})(?!\d)")


def remove_stale_temporaries(directory: Path, rank: Optional[int] = None) -> None:
    """Temporary files (`.<name>.tmp.<pid>`) left by a killed task: never read, removed so they do not accumulate.

    With `rank`, only that task's files directly in `directory`, while the other tasks of the stage may be writing
    theirs: a per-task file name starts its zero-padded numbers with the writer's rank (shard-00003,
    stage-hash-00003, hashes-00003-00001 for the bucket 1 part written by task 3), so the first 5-digit number of
    the name must be `rank`. Matching the rank anywhere in the name removed task 0's hashes-00000-00001 while it
    was being written, when task 1 started."""
    if not directory.is_dir():
        return
    if rank is None:
        found = list(directory.rglob(".*.tmp.*"))
    else:
        found = [tmp for tmp in directory.glob(".*.tmp.*") if _writer_rank(tmp.name) == rank]
    for tmp in found:
        tmp.unlink(missing_ok=True)


def _writer_rank(temporary_name: str) -> Optional[int]:
    match = _FIRST_RANK_NUMBER.search(temporary_name.split(".tmp.")[0])
    return int(match.group(1)) if match else None
