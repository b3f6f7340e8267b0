"""Packed token shard format: the contract between the data pipeline (writer) and the trainer (reader).

A shard named `<stem>` in a directory is three files, four when its documents carry their source:
  `<stem>.tokens`   token ids, little-endian uint16 (vocab <= 65535) or uint32, documents back to back;
  `<stem>.index`    little-endian uint64 document start offsets into `.tokens`, n_documents + 1 entries
                    (the last is n_tokens), so document i is tokens[index[i]:index[i + 1]];
  `<stem>.sources`  (optional) little-endian uint16 per document: its source, as an index into the header's
                    `document_sources` list of names, so held-out losses can be told apart by source after
                    mixing shuffled the sources together;
  `<stem>.mask`     (optional) uint8 per token, 1 where the token counts in the training loss (supervised
                    fine-tuning: the assistant's tokens of a conversation), 0 where it does not; present exactly
                    when the header says `loss_mask: true`;
  `<stem>.json`     header: format, version, dtype, n_tokens, n_documents, tokenizer (id, vocab_size,
                    eos_id), sources (free-form counts by source), `document_sources` (the names the
                    `.sources` file indexes, present exactly when that file is), and the SHA-256 of the
                    `.tokens` bytes (`tokens_sha256`), so a trainer can tell one corpus from another of the same
                    size; `decontamination` (optional): what the data was decontaminated against, per evaluation
                    task its content fingerprint, the n-gram size and the documents removed for it
                    (data_pipeline/decontamination.py).
The header is renamed into place last, after the data files, so a shard without a header is incomplete and never
read; every file is written under a temporary name first, so a killed writer leaves no partial shard. Readers of
the format before `.sources` or `.mask` existed ignore them and read the same tokens.
Readers memory-map, so opening a terabyte of shards costs nothing.

Plain numpy memmaps rather than `datasets`/Arrow: the trainer needs O(1) random access to token windows that
cross document boundaries, which Arrow's row layout does not give without copying.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

FORMAT_NAME = "loom-packed"
FORMAT_VERSION = 1
HEADER_SUFFIX = ".json"
TOKENS_SUFFIX = ".tokens"
INDEX_SUFFIX = ".index"
SOURCES_SUFFIX = ".sources"
MASK_SUFFIX = ".mask"
SOURCE_ID_DTYPE = np.dtype("<u2")
MASK_DTYPE = np.dtype("u1")
# The parts of a header's `decontamination` record that list what was decontaminated against, by name
DECONTAMINATION_KINDS = ("tasks", "files")
NO_SOURCE = "all"  # the source name of a document that names none (as the header's counts have always said)


class ShardFormatError(ValueError):
    """A shard is missing, truncated or inconsistent with its header."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _atomic_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


class ShardWriter:
    """Streams documents into one shard; `close()` publishes it atomically (header last).

    Use as a context manager: an exception inside the block discards the temporary files instead of publishing.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        stem: str,
        *,
        vocab_size: int,
        eos_id: int | None,
        tokenizer_id: str,
        sources: dict | None = None,
        decontamination: dict | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.decontamination = decontamination
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.dtype = dtype_for_vocab(vocab_size)
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.tokenizer_id = tokenizer_id
        self.sources = dict(sources or {})
        # Hidden temporary names (".<stem>...tmp.<pid>"): never mistaken for a shard, and swept by the pipeline's
        # stale-temporary cleanup after a killed task.
        suffix = f".tmp.{os.getpid()}"
        self._tmp_tokens = self.directory / f".{stem}{TOKENS_SUFFIX}{suffix}"
        self._tmp_index = self.directory / f".{stem}{INDEX_SUFFIX}{suffix}"
        self._tmp_header = self.directory / f".{stem}{HEADER_SUFFIX}{suffix}"
        self._tmp_sources = self.directory / f".{stem}{SOURCES_SUFFIX}{suffix}"
        self._tmp_mask = self.directory / f".{stem}{MASK_SUFFIX}{suffix}"
        self._tokens_file = open(self._tmp_tokens, "wb")
        self._mask_file = None  # opened by the first document that carries a loss mask
        self._tokens_hash = hashlib.sha256()
        self._offsets: list[int] = [0]
        self._source_ids: list[int] = []  # per document, into self._source_names
        self._source_names: dict[str, int] = {}
        self._any_source = False
        self._closed = False

    def add_document(
        self,
        tokens: Sequence[int] | np.ndarray,
        source: str | None = None,
        loss_mask: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Append one document; `source` (its dataset of origin) is recorded per document when any document of
        the shard names one (those that do not count as NO_SOURCE). `loss_mask` (0/1 per token) is all or
        nothing: give it for every document of the shard or for none."""
        array = np.asarray(tokens)
        self._add_mask(loss_mask, array.size)
        if array.ndim != 1:
            raise ShardFormatError(f"a document must be a 1-D token sequence, got shape {array.shape}")
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ShardFormatError(
                f"token ids must be in [0, {self.vocab_size}), got range [{array.min()}, {array.max()}]"
            )
        data = array.astype(self.dtype, copy=False).tobytes()
        self._tokens_file.write(data)
        self._tokens_hash.update(data)
        self._offsets.append(self._offsets[-1] + int(array.size))
        name = NO_SOURCE if source is None else str(source)
        self._any_source = self._any_source or source is not None
        if name not in self._source_names:
            if len(self._source_names) > np.iinfo(SOURCE_ID_DTYPE).max:
                raise ShardFormatError(f"more than {np.iinfo(SOURCE_ID_DTYPE).max + 1} distinct sources in one shard")
            self._source_names[name] = len(self._source_names)
        self._source_ids.append(self._source_names[name])

    def _add_mask(self, loss_mask: Sequence[int] | np.ndarray | None, n_tokens: int) -> None:
        if (loss_mask is None) != (self._mask_file is None) and len(self._offsets) > 1:
            raise ShardFormatError(
                f"shard {self.stem}: a loss mask must be given for every document or for none "
                f"(document {len(self._offsets) - 1} {'lacks one' if loss_mask is None else 'is the first with one'})"
            )
        if loss_mask is None:
            return
        mask = np.asarray(loss_mask)
        if mask.shape != (n_tokens,) or (mask.size and not np.isin(mask, (0, 1)).all()):
            raise ShardFormatError(f"a loss mask must be 0/1 per token ({n_tokens}), got shape {mask.shape}")
        if self._mask_file is None:
            self._mask_file = open(self._tmp_mask, "wb")
        self._mask_file.write(mask.astype(MASK_DTYPE).tobytes())

    def add_documents(self, documents: Iterable[Sequence[int]]) -> None:
        for doc in documents:
            self.add_document(doc)

    @property
    def n_tokens(self) -> int:
        return self._offsets[-1]

    def close(self) -> Path:
        """Publish the shard and return the header path."""
        if self._closed:
            raise RuntimeError("shard already closed")
        self._closed = True
        self._tokens_file.close()
        if self._mask_file is not None:
            self._mask_file.close()
        np.asarray(self._offsets, dtype="<u8").tofile(self._tmp_index)
        if self._any_source:
            np.asarray(self._source_ids, dtype=SOURCE_ID_DTYPE).tofile(self._tmp_sources)
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "dtype": self.dtype.name,
            "n_tokens": self.n_tokens,
            "n_documents": len(self._offsets) - 1,
            "tokenizer": {"id": self.tokenizer_id, "vocab_size": self.vocab_size, "eos_id": self.eos_id},
            "sources": self.sources,
            "tokens_sha256": self._tokens_hash.hexdigest(),
        }
        if self._any_source:
            header["document_sources"] = list(self._source_names)
        if self.decontamination is not None:
            header["decontamination"] = self.decontamination
        if self._mask_file is not None:
            header["loss_mask"] = True
        self._tmp_header.write_text(json.dumps(header, indent=2))
        _atomic_replace(self._tmp_tokens, self.directory / f"{self.stem}{TOKENS_SUFFIX}")
        _atomic_replace(self._tmp_index, self.directory / f"{self.stem}{INDEX_SUFFIX}")
        if self._any_source:
            _atomic_replace(self._tmp_sources, self.directory / f"{self.stem}{SOURCES_SUFFIX}")
        if self._mask_file is not None:
            _atomic_replace(self._tmp_mask, self.directory / f"{self.stem}{MASK_SUFFIX}")
        final_header = self.directory / f"{self.stem}{HEADER_SUFFIX}"
        _atomic_replace(self._tmp_header, final_header)
        return final_header

    def abort(self) -> None:
        self._closed = True
        self._tokens_file.close()
        if self._mask_file is not None:
            self._mask_file.close()
        for tmp in (self._tmp_tokens, self._tmp_index, self._tmp_header, self._tmp_sources, self._tmp_mask):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class PackedShard:
    """One shard opened read-only through memory maps, validated against its header."""

    header_path: Path
    header: dict
    tokens: np.ndarray
    offsets: np.ndarray
    source_ids: np.ndarray | None = None  # per document, into header["document_sources"]
    loss_mask: np.ndarray | None = None  # per token, 1 where it counts in the loss (header `loss_mask: true`)

    @property
    def source_names(self) -> list[str]:
        return list(self.header.get("document_sources") or [])

    @classmethod
    def open(cls, header_path: str | os.PathLike) -> "PackedShard":
        header_path = Path(header_path)
        try:
            header = json.loads(header_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ShardFormatError(f"{header_path}: unreadable shard header ({exc})") from exc
        if header.get("format") != FORMAT_NAME:
            raise ShardFormatError(f"{header_path}: not a {FORMAT_NAME} shard header")
        if header.get("version") != FORMAT_VERSION:
            raise ShardFormatError(f"{header_path}: shard version {header.get('version')}, expected {FORMAT_VERSION}")
        stem = header_path.name[: -len(HEADER_SUFFIX)]
        tokens_path = header_path.with_name(stem + TOKENS_SUFFIX)
        index_path = header_path.with_name(stem + INDEX_SUFFIX)
        dtype = np.dtype(header["dtype"]).newbyteorder("<")
        n_tokens, n_docs = int(header["n_tokens"]), int(header["n_documents"])
        for path, expected in ((tokens_path, n_tokens * dtype.itemsize), (index_path, (n_docs + 1) * 8)):
            if not path.exists():
                raise ShardFormatError(f"{path}: missing (shard {stem} is incomplete)")
            if path.stat().st_size != expected:
                raise ShardFormatError(
                    f"{path}: size {path.stat().st_size} bytes, header says {expected}: truncated or corrupt shard"
                )
        tokens = np.memmap(tokens_path, dtype=dtype, mode="r") if n_tokens else np.zeros(0, dtype=dtype)
        offsets = np.fromfile(index_path, dtype="<u8")
        if offsets[0] != 0 or offsets[-1] != n_tokens or np.any(np.diff(offsets.astype(np.int64)) < 0):
            raise ShardFormatError(f"{index_path}: document offsets are inconsistent with the header")
        source_ids = _open_source_ids(header_path, stem, header, n_docs)
        return cls(header_path, header, tokens, offsets, source_ids, _open_loss_mask(header_path, stem, header))

    @property
    def n_tokens(self) -> int:
        return int(self.header["n_tokens"])

    @property
    def n_documents(self) -> int:
        return int(self.header["n_documents"])

    def document(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])])


def _open_source_ids(header_path: Path, stem: str, header: dict, n_docs: int) -> np.ndarray | None:
    """The shard's per-document source ids, checked against the header's names; None when it records none."""
    names = header.get("document_sources")
    if names is None:
        return None
    path = header_path.with_name(stem + SOURCES_SUFFIX)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ShardFormatError(f"{header_path}: document_sources must be a non-empty list of source names")
    if not path.exists():
        raise ShardFormatError(f"{path}: missing, but {header_path.name} lists document_sources")
    if path.stat().st_size != n_docs * SOURCE_ID_DTYPE.itemsize:
        raise ShardFormatError(
            f"{path}: size {path.stat().st_size} bytes, header says {n_docs * SOURCE_ID_DTYPE.itemsize} "
            f"({n_docs} documents): truncated or corrupt shard"
        )
    ids = np.fromfile(path, dtype=SOURCE_ID_DTYPE)
    if ids.size and int(ids.max()) >= len(names):
        raise ShardFormatError(f"{path}: source id {int(ids.max())} but the header names {len(names)} sources")
    return ids


def _open_loss_mask(header_path: Path, stem: str, header: dict) -> np.ndarray | None:
    """The shard's per-token loss mask (memory-mapped), checked against the header; None when it has none."""
    if not header.get("loss_mask"):
        return None
    path = header_path.with_name(stem + MASK_SUFFIX)
    n_tokens = int(header["n_tokens"])
    if not path.exists():
        raise ShardFormatError(f"{path}: missing, but {header_path.name} says loss_mask: true")
    if path.stat().st_size != n_tokens * MASK_DTYPE.itemsize:
        raise ShardFormatError(
            f"{path}: size {path.stat().st_size} bytes, header says {n_tokens} tokens: truncated or corrupt shard"
        )
    return np.memmap(path, dtype=MASK_DTYPE, mode="r") if n_tokens else np.zeros(0, dtype=MASK_DTYPE)


def _is_shard_header(path: Path) -> bool:
    """A `.json` is a shard header when it has shard data beside it or says it is one; other JSON files that live
    next to shards (the tokenizer's `tokenizer.json`) are not. A header whose data files are missing still counts,
    so opening it reports the incomplete shard instead of skipping it silently."""
    stem = path.name[: -len(HEADER_SUFFIX)]
    if path.with_name(stem + TOKENS_SUFFIX).exists() or path.with_name(stem + INDEX_SUFFIX).exists():
        return True
    try:
        return json.loads(path.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """Header paths of complete shards in `directory`, sorted by name (the canonical shard order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ShardFormatError(f"{directory}: not a directory of packed shards")
    return sorted(p for p in directory.glob(f"*{HEADER_SUFFIX}") if not p.name.startswith(".") and _is_shard_header(p))


class PackedDataset:
    """All shards of a directory as one concatenated token stream (shards in name order)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        headers = list_shards(self.directory)
        if not headers:
            raise ShardFormatError(
                f"{self.directory}: no packed shards (*.json headers) found; run the data pipeline's tokenize step"
            )
        self.shards = [PackedShard.open(h) for h in headers]
        tokenizers = {json.dumps(s.header["tokenizer"], sort_keys=True) for s in self.shards}
        if len(tokenizers) != 1:
            raise ShardFormatError(f"{self.directory}: shards were written by different tokenizers: {tokenizers}")
        self.tokenizer = self.shards[0].header["tokenizer"]
        masked = {s.loss_mask is not None for s in self.shards}
        if len(masked) != 1:
            raise ShardFormatError(
                f"{self.directory}: some shards carry a loss mask (.mask) and others do not: write them all with "
                f"the same tokenize step (chat_tokenize for conversations)"
            )
        self.has_loss_mask = masked.pop()
        sizes = np.array([s.n_tokens for s in self.shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(sizes)])

    @property
    def n_tokens(self) -> int:
        return int(self.shard_starts[-1])

    @property
    def n_documents(self) -> int:
        return sum(s.n_documents for s in self.shards)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def decontamination(self) -> dict | None:
        """The decontamination record the shards carry: None when any shard has none; when the shards' records
        differ (shards of several pipeline runs), only the tasks and files every shard records alike."""
        records = [shard.header.get("decontamination") for shard in self.shards]
        if any(not isinstance(r, dict) for r in records):
            return None
        first = records[0]
        common = {k: v for k, v in first.items() if k not in DECONTAMINATION_KINDS}
        for kind in DECONTAMINATION_KINDS:
            common[kind] = {
                name: entry
                for name, entry in (first.get(kind) or {}).items()
                if all((r.get(kind) or {}).get(name) == entry for r in records[1:])
            }
        return common

    def fingerprint(self) -> str:
        """SHA-256 over every shard's name and header (with the content hash the writer recorded): equal for the
        same tokens in the same shards, different for other data of the same size. Shards written before headers
        carried `tokens_sha256` are fingerprinted by their header alone."""
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(shard.header_path.name.encode())
            digest.update(json.dumps(shard.header, sort_keys=True).encode())
        return digest.hexdigest()

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the concatenated stream as int64 (crosses shard boundaries)."""
        out = np.empty(length, dtype=np.int64)
        for shard, pos, at, take in self._pieces(start, length):
            out[at : at + take] = shard.tokens[pos : pos + take]
        return out

    def read_loss_mask(self, start: int, length: int) -> np.ndarray:
        """The loss mask (0/1 as uint8) of tokens [start, start+length) of the stream, as `read` reads them."""
        if not self.has_loss_mask:
            raise ValueError(f"{self.directory}: the shards carry no loss mask")
        out = np.empty(length, dtype=np.uint8)
        for shard, pos, at, take in self._pieces(start, length):
            out[at : at + take] = shard.loss_mask[pos : pos + take]
        return out

    def _pieces(self, start: int, length: int) -> Iterator[tuple[PackedShard, int, int, int]]:
        """(shard, position in it, position in the range, length) of each shard's part of the stream's tokens
        [start, start+length), in order."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"token range [{start}, {start + length}) outside [0, {self.n_tokens})")
        filled = 0
        shard_idx = int(np.searchsorted(self.shard_starts, start, side="right") - 1)
        pos = start - int(self.shard_starts[shard_idx])
        while filled < length:
            shard = self.shards[shard_idx]
            take = min(length - filled, shard.n_tokens - pos)
            yield shard, pos, filled, take
            filled += take
            shard_idx += 1
            pos = 0

    @property
    def source_names(self) -> list[str]:
        """Every source the shards record per document, sorted; [] when no shard records any. Documents of shards
        without the record count as NO_SOURCE."""
        if all(shard.source_ids is None for shard in self.shards):
            return []
        names = {NO_SOURCE for shard in self.shards if shard.source_ids is None}
        for shard in self.shards:
            names.update(shard.source_names)
        return sorted(names)

    def read_sources(self, start: int, length: int) -> np.ndarray:
        """For tokens [start, start+length) of the stream (as `read`), the index into `source_names` of the source
        of the document each token belongs to."""
        names = {name: i for i, name in enumerate(self.source_names)}
        if not names:
            raise ValueError(f"{self.directory}: the shards record no per-document sources")
        out = np.empty(length, dtype=np.int64)
        for shard, pos, at, take in self._pieces(start, length):
            if shard.source_ids is None:
                out[at : at + take] = names[NO_SOURCE]
            else:
                to_global = np.array([names[name] for name in shard.source_names], dtype=np.int64)
                positions = np.arange(pos, pos + take, dtype=np.uint64)
                documents = np.searchsorted(shard.offsets, positions, side="right") - 1
                out[at : at + take] = to_global[shard.source_ids[documents]]
        return out

    def documents(self) -> Iterator[np.ndarray]:
        for shard in self.shards:
            for i in range(shard.n_documents):
                yield shard.document(i)
