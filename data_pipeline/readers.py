"""Reading raw inputs into Documents, with quarantine of bad rows: JSONL (also .gz/.zst), Parquet, text files,
WARC files, a saved `datasets` dataset or a hub name.

Raw inputs are messy, so the reader never raises on a bad row: it yields a `Quarantined` record naming the file, the
1-based line (row for Parquet and datasets) and the reason, and the executor writes it to the quarantine output. Bad
rows are: invalid UTF-8, invalid JSON (also numbers too long to parse and nesting too deep), not an object, a
missing/non-string/empty/too large text (with `input_format=chat`: a row that is not a conversation,
data_pipeline/chat.py: no messages, a message without role or content, empty content, no assistant turn), and any
string in text, id or metadata (keys included, at any depth) holding a lone surrogate (`"\\ud800"` is valid JSON but
cannot be written as UTF-8) or a NUL character. A UTF-8 byte order mark at the start of a line is dropped. A
truncated or corrupt .gz/.zst file yields its readable lines, then one record with the compressed byte offset where
it broke (data_pipeline/compressed.py); a corrupt Parquet file yields its readable rows, then one record. Every
reader streams, so a shard never has to fit in memory.

Inputs are split into `tasks` shards deterministically: with at least as many files as tasks, whole files go
to tasks round-robin; otherwise every task reads all files and keeps every `tasks`-th row. The split depends
only on the input and `tasks`, never on the number of worker processes, so results do not depend on workers.
Given the plan's fingerprints, a task refuses to read a file that changed (or a file list that changed) since the
run started (data_pipeline/fingerprint.py).

A WARC file yields one document per HTML response (the page's HTML in `text`; main-text extraction is a later step,
data_pipeline/extraction.py): records that are not HTTP responses with an HTML body (requests, metadata, images)
are not documents and are skipped; a response whose body cannot be decoded becomes a quarantine record naming the
file, the record and the reason.

Every reader of the user's input lives here, and only those: the pipeline's own shards (well-formed by
construction, written atomically) are data_pipeline/shards.py, and HTML extraction, which reads no input, is
data_pipeline/extraction.py.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Union

from data_pipeline.compressed import StreamDamage, read_lines
from data_pipeline.document import Document
from data_pipeline.extraction import decode_body
from data_pipeline.fingerprint import START_OVER, InputChanged, check_before_reading

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson.gz")
TEXT_SUFFIXES = (".txt", ".md")
PARQUET_SUFFIXES = (".parquet",)
WARC_SUFFIXES = (".warc", ".warc.gz")  # HTML responses, one document each (warc_rows)
INPUT_FORMATS = ("text", "chat")  # what a row is: a document's text, or a conversation (data_pipeline/chat.py)
HTML_TYPES = ("text/html", "application/xhtml+xml")
RAW_PREVIEW_CHARS = 2000
BOM = b"\xef\xbb\xbf"
# In a line that decoded as UTF-8, only a \uD800-\uDFFF or \u0000 escape can put a lone surrogate or a NUL into a
# parsed string (raw NUL is invalid JSON), so lines without one skip the walk over every field.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|0000)")


@dataclass
class Quarantined:
    """A row that could not become a Document: why, and where it came from (`line` is 1-based)."""

    reason: str
    source: str
    line: int
    raw: str
    byte_offset: Optional[int] = None  # a broken compressed file: the compressed offset where decoding stopped
    # Size of the whole bad row (not only the preview in `raw`), so the report counts it in bytes and words too
    # (words split on whitespace as the stats count them; a JSON row's keys included). None: measured on `raw`.
    raw_bytes: Optional[int] = None
    raw_words: Optional[int] = None

    def __post_init__(self) -> None:
        if self.raw_bytes is None:
            self.raw_bytes = len(self.raw.encode("utf-8", "surrogatepass"))
        if self.raw_words is None:
            self.raw_words = len(self.raw.split())

    def to_record(self) -> dict[str, Any]:
        record = {"reason": self.reason, "source": self.source, "line": self.line, "raw": self.raw}
        if self.byte_offset is not None:
            record["byte_offset"] = self.byte_offset
        return record


Row = Union[Document, Quarantined]


@dataclass
class InputSpec:
    path: str
    text_key: str = "text"
    id_key: str = "id"
    split: str = "train"
    max_doc_chars: int = 1_000_000
    format: str = "text"  # one of INPUT_FORMATS; chat: conversations for supervised fine-tuning (data_pipeline/chat.py)


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


def input_files(spec: InputSpec) -> dict[str, Path]:
    """Source name -> path of every file the input reads; {} for a hub name. Source names (in quarantine records
    and in the ids of documents without one) are relative to the input directory, to a glob's leading literal
    directories, or the file name of a single file."""
    path = Path(spec.path)
    if _is_saved_dataset(path):
        return {
            str(f.relative_to(path)): f
            for f in sorted(path.rglob("*"))
            if f.is_file() and not f.name.startswith("cache-")
        }
    files = list_input_files(spec.path)
    if path.is_dir():
        return {str(f.relative_to(path)): f for f in files}
    if path.is_file():
        return {path.name: path}
    magic = next(i for i, part in enumerate(path.parts + ("*",)) if any(c in part for c in "*?["))
    root = Path(*path.parts[:magic]) if magic else None
    return {(str(f.relative_to(root)) if root is not None else str(f)): f for f in files}


def _preview(text: str) -> str:
    """The start of a bad row, always writable as UTF-8 (lone surrogates shown as \\udXXX escapes)."""
    return text[:RAW_PREVIEW_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def _string_problem(value: str) -> Optional[str]:
    if "\x00" in value:
        return "nul_character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "lone_surrogate"
    return None


def _unwritable_field(record: dict, first: tuple[str, ...] = ()) -> Optional[tuple[str, str]]:
    """(problem, field path) of the first string, key or value at any depth, that is not clean UTF-8 text.

    Fields named in `first` (text, id) are checked before the rest. Iterative: JSON nests deeper than recursion.
    """
    keys = [k for k in first if k in record] + [k for k in record if k not in first]
    stack: list[tuple[str, Any]] = []
    for key in reversed(keys):
        problem = _string_problem(key) if isinstance(key, str) else None
        if problem:
            return problem, f"<key {_preview(key)!r}>"
        stack.append((str(key), record[key]))
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = _string_problem(value)
            if problem:
                return problem, path
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                problem = _string_problem(key) if isinstance(key, str) else None
                if problem:
                    return problem, f"{path}.<key {_preview(key)!r}>"
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{path}.{i}", item) for i, item in reversed(list(enumerate(value))))
    return None


def _bad_row(reason: str, source: str, line: int, raw: str) -> Quarantined:
    """A quarantine record for the whole row `raw`: its preview, and its full size in bytes and words."""
    size = len(raw.encode("utf-8", "surrogatepass"))
    return Quarantined(reason, source, line, _preview(raw), raw_bytes=size, raw_words=len(raw.split()))


def _record_to_row(record: Any, spec: InputSpec, source: str, line: int, raw: str, check_strings: bool = True) -> Row:
    if not isinstance(record, dict):
        return _bad_row("not_an_object", source, line, raw)
    unwritable = _unwritable_field(record, first=(spec.text_key, spec.id_key)) if check_strings else None
    if unwritable is not None:
        return _bad_row(f"{unwritable[0]}:{unwritable[1]}", source, line, raw)
    if spec.format == "chat":
        return _chat_row(record, spec, source, line, raw)
    if spec.text_key not in record:
        return _bad_row(f"missing_field:{spec.text_key}", source, line, raw)
    text = record[spec.text_key]
    if not isinstance(text, str):
        return _bad_row(f"text_not_string:{type(text).__name__}", source, line, raw)
    if not text.strip():
        return _bad_row("empty_document", source, line, raw)
    if len(text) > spec.max_doc_chars:
        return _bad_row(f"too_large:{len(text)}_chars", source, line, raw)
    doc_id = record.get(spec.id_key)
    metadata = {k: v for k, v in record.items() if k not in (spec.text_key, spec.id_key)}
    return Document(id=str(doc_id) if doc_id is not None else f"{source}:{line}", text=text, metadata=metadata)


def _chat_row(record: dict, spec: InputSpec, source: str, line: int, raw: str) -> Row:
    """A conversation (data_pipeline/chat.py) as a Document whose text is its canonical JSON, or the reason it is
    not one."""
    from data_pipeline.chat import chat_row_metadata, conversation_messages, encode_conversation

    messages, problem = conversation_messages(record)
    if problem is not None:
        return _bad_row(problem, source, line, raw)
    text = encode_conversation(messages)
    if len(text) > spec.max_doc_chars:
        return _bad_row(f"too_large:{len(text)}_chars", source, line, raw)
    doc_id = record.get(spec.id_key)
    metadata = {k: v for k, v in chat_row_metadata(record).items() if k != spec.id_key}
    metadata["origin"] = f"{source}:{line}"  # where a later step's exclusion of it points
    return Document(id=str(doc_id) if doc_id is not None else f"{source}:{line}", text=text, metadata=metadata)


def _parse_json(line: str) -> tuple[Any, Optional[str]]:
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return None, f"invalid_json:{exc.msg} (char {exc.pos})"
    except ValueError as exc:  # e.g. an integer longer than Python's int parsing limit
        return None, f"invalid_json:{str(exc).splitlines()[0][:200]}"
    except RecursionError:
        return None, "invalid_json:nested too deeply"


def _invalid_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """The reason for a line that is not UTF-8, naming the field holding the bad bytes when the line is JSON."""
    record, _ = _parse_json(raw.decode("utf-8", "surrogateescape"))  # bad bytes become lone surrogates
    found = _unwritable_field(record) if isinstance(record, dict) else None
    if found is not None and found[0] == "lone_surrogate":
        return f"invalid_utf8:{found[1]}"
    return f"invalid_utf8:{exc.reason} (byte {exc.start})"


def _line_to_row(raw: bytes, spec: InputSpec, source: str, line_no: int) -> Row:
    if raw.startswith(BOM):  # first line of a file saved with a BOM, or of one concatenated after another
        raw = raw[len(BOM) :]
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        preview = raw[:RAW_PREVIEW_CHARS].decode("utf-8", "backslashreplace")
        return Quarantined(
            _invalid_utf8(raw, exc), source, line_no, preview, raw_bytes=len(raw), raw_words=len(raw.split())
        )
    if not line.strip():
        return Quarantined("empty_line", source, line_no, "", raw_bytes=len(raw))
    record, error = _parse_json(line)
    if error is not None:
        return _bad_row(error, source, line_no, line)
    return _record_to_row(record, spec, source, line_no, line, check_strings=_SUSPECT_ESCAPE.search(line) is not None)


def _jsonl_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    for line_no, item in enumerate(read_lines(path), start=1):
        if isinstance(item, StreamDamage):  # the last record of a broken .gz/.zst: it stands for the cut line
            raw = item.tail[:RAW_PREVIEW_CHARS].decode("utf-8", "backslashreplace")
            yield Quarantined(item.reason, source, line_no, raw, byte_offset=item.byte_offset)
            return
        yield _line_to_row(item, spec, source, line_no)


def _text_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        preview = data[:RAW_PREVIEW_CHARS].decode("utf-8", "backslashreplace")
        yield Quarantined(f"invalid_utf8:{exc.reason} (byte {exc.start})", source, 1, preview)
        return
    yield _record_to_row({spec.text_key: text, spec.id_key: source}, spec, source, 1, text)


def _parquet_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    line = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                line += 1
                yield _record_to_row(record, spec, source, line, json.dumps(record, default=str))
    except (pa.ArrowException, OSError) as exc:  # truncated or corrupt file: the rows read so far, then why
        yield Quarantined(f"corrupt_parquet:{str(exc).splitlines()[0][:200]}", source, line + 1, "")


def warc_rows(path: Path, source: str, max_doc_chars: int = 1_000_000) -> Iterator[Row]:
    """Documents (HTML in `text`, url/date/record id in metadata) of the HTML responses of one WARC file."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    with open(path, "rb") as stream:
        number = 0
        try:
            for record in ArchiveIterator(stream):
                number += 1
                if record.rec_type != "response" or record.http_headers is None:
                    continue
                content_type = record.http_headers.get_header("Content-Type") or ""
                if not content_type.lower().startswith(HTML_TYPES):
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI")
                record_id = record.rec_headers.get_header("WARC-Record-ID") or f"{source}:{number}"
                body = record.content_stream().read()
                try:
                    html = decode_body(body, content_type)
                except UnicodeDecodeError as exc:
                    yield Quarantined(
                        f"undecodable_html:{exc.reason}",
                        source,
                        number,
                        body[:RAW_PREVIEW_CHARS].decode("utf-8", "replace"),
                        raw_bytes=len(body),
                        raw_words=len(body.split()),
                    )
                    continue
                if len(html) > max_doc_chars:
                    yield _bad_row(f"too_large:{len(html)}_chars", source, number, html)
                    continue
                metadata = {
                    "url": url,
                    "date": record.rec_headers.get_header("WARC-Date"),
                    "content_type": content_type,
                }
                yield Document(id=record_id.strip("<>"), text=html, metadata=metadata)
        except ArchiveLoadFailed as exc:
            yield Quarantined(f"invalid_warc:{str(exc).splitlines()[0][:200]}", source, number + 1, "")


def _file_rows(path: Path, spec: InputSpec, source: str) -> Iterator[Row]:
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return _parquet_rows(path, spec, source)
    if name.endswith(TEXT_SUFFIXES):
        return _text_rows(path, spec, source)
    if name.endswith(WARC_SUFFIXES):
        return warc_rows(path, source, spec.max_doc_chars)
    return _jsonl_rows(path, spec, source)


def _dataset_rows(dataset: Iterable[dict], spec: InputSpec, source: str) -> Iterator[Row]:
    for line, record in enumerate(dataset, start=1):
        yield _record_to_row(record, spec, source, line, json.dumps(record, default=str))


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
        raise ValueError(
            f"input={spec.path}: no readable files (expected .jsonl[.gz|.zst], .parquet, .txt, or a saved dataset)"
        )
    if not spec.path.startswith(("/", ".", "~")) and not any(c in spec.path for c in "*?["):
        return "hub"  # "owner/name" or "name": tried on the hub, with an error naming both readings if absent
    raise ValueError(f"input={spec.path}: no such file, directory or glob match")


def _check_unchanged(files: Mapping[str, Path], fingerprints: Mapping[str, Any], input_path: str) -> None:
    if set(files) != set(fingerprints):
        added, removed = sorted(set(files) - set(fingerprints)), sorted(set(fingerprints) - set(files))
        raise InputChanged(
            f"input={input_path}: files changed since this run started (added {added}, removed {removed}); {START_OVER}"
        )
    for name, path in files.items():
        check_before_reading(name, path, fingerprints[name])


def read_input_shard(
    spec: InputSpec, rank: int, tasks: int, fingerprints: Optional[Mapping[str, Any]] = None
) -> Iterator[Row]:
    """Rows of shard `rank` of `tasks` of a raw input (see the module docstring for the split and `fingerprints`)."""
    kind = describe_input(spec)
    files = input_files(spec)
    if fingerprints:
        _check_unchanged(files, fingerprints, spec.path)
    if kind in ("saved_dataset", "hub"):
        rows = _dataset_rows(_load_dataset(spec), spec, Path(spec.path).name or spec.path)
        for i, row in enumerate(rows):
            if i % tasks == rank:
                yield row
        return
    names = list(files)
    if len(names) >= tasks:
        for name in names[rank::tasks]:
            yield from _file_rows(files[name], spec, name)
        return
    index = 0
    for name in names:
        for row in _file_rows(files[name], spec, name):
            if index % tasks == rank:
                yield row
            index += 1
