"""Preference shards: tokenised (prompt, chosen, rejected) pairs for DPO, written and verified here.

One shard is two files with one stem:
- `<stem>.pref.npz`: numpy arrays (no pickle) `tokens` (uint32: each pair's prompt, chosen and rejected ids, pair
  after pair) and `lengths` (int64 [pairs, 3]: the three lengths of each pair);
- `<stem>.pref.json`: the header, written last (its presence means the shard is complete): format and version,
  pair and token counts, the tokenizer (name, eos id, vocabulary size), the SHA-256 of the .npz and, per pair, the
  `file:line` it came from.
Both are written to temporaries and renamed into place. Reading verifies the header, the checksum and that the
lengths add up (every prompt and response non-empty) before any pair is served, and every error names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMAT = "loom-preference"
VERSION = 1
ARRAYS_SUFFIX = ".pref.npz"
HEADER_SUFFIX = ".pref.json"


class PreferenceFormatError(ValueError):
    """A preference shard is missing, incomplete or not what its header says."""


@dataclass
class PreferencePair:
    """One tokenised pair and where it came from (`file:line`)."""

    prompt: Sequence[int]
    chosen: Sequence[int]
    rejected: Sequence[int]
    source: str = ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_synced(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_preference_shard(directory: str | os.PathLike, stem: str, pairs: Sequence[PreferencePair], tokenizer: dict):
    """Write `pairs` as shard `stem` in `directory` (atomically, header last); returns the header's path.
    `tokenizer`: what the header records of the tokenizer (name, eos_id, vocab_size)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lengths = np.array([[len(p.prompt), len(p.chosen), len(p.rejected)] for p in pairs], dtype=np.int64).reshape(-1, 3)
    pieces = [np.asarray(part, dtype=np.uint32) for p in pairs for part in (p.prompt, p.chosen, p.rejected)]
    tokens = np.concatenate(pieces) if pieces else np.empty(0, np.uint32)
    arrays = directory / f"{stem}{ARRAYS_SUFFIX}"
    header = directory / f"{stem}{HEADER_SUFFIX}"
    tmp_arrays = directory / f".{stem}{ARRAYS_SUFFIX}.tmp.{os.getpid()}"
    tmp_header = directory / f".{stem}{HEADER_SUFFIX}.tmp.{os.getpid()}"
    try:
        with open(tmp_arrays, "wb") as f:
            np.savez(f, tokens=tokens, lengths=lengths)
        _replace_synced(tmp_arrays, arrays)
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "n_pairs": int(lengths.shape[0]),
            "n_tokens": int(tokens.size),
            "max_token_id": int(tokens.max()) if tokens.size else -1,
            "tokenizer": tokenizer,
            "arrays": arrays.name,
            "arrays_sha256": _sha256(arrays),
            "sources": [p.source for p in pairs],
        }
        tmp_header.write_text(json.dumps(meta, indent=1) + "\n")
        _replace_synced(tmp_header, header)
    finally:
        for tmp in (tmp_arrays, tmp_header):
            tmp.unlink(missing_ok=True)
    return header


class PreferenceShard:
    """One verified shard, held in memory (pairs are short; a shard is a few MB)."""

    def __init__(self, header_path: str | os.PathLike) -> None:
        self.header_path = Path(header_path)
        try:
            self.header: dict[str, Any] = json.loads(self.header_path.read_text())
        except (OSError, ValueError) as exc:
            raise PreferenceFormatError(f"{self.header_path}: unreadable preference shard header ({exc})") from exc
        if self.header.get("format") != FORMAT or self.header.get("version") != VERSION:
            raise PreferenceFormatError(
                f"{self.header_path}: not a {FORMAT} v{VERSION} header (format={self.header.get('format')!r}, "
                f"version={self.header.get('version')!r}): write it with `python -m data_pipeline preference`"
            )
        arrays = self.header_path.with_name(str(self.header.get("arrays", "")))
        if not arrays.is_file():
            raise PreferenceFormatError(f"{self.header_path}: its arrays file {arrays} is missing")
        if _sha256(arrays) != self.header.get("arrays_sha256"):
            raise PreferenceFormatError(f"{arrays}: SHA-256 differs from {self.header_path}'s: the shard is corrupt")
        try:
            with np.load(arrays, allow_pickle=False) as npz:
                self.tokens, self.lengths = npz["tokens"], npz["lengths"]
        except (OSError, ValueError, KeyError) as exc:
            raise PreferenceFormatError(f"{arrays}: unreadable preference arrays ({exc})") from exc
        n_pairs = int(self.header.get("n_pairs", -1))
        if (
            self.lengths.shape != (n_pairs, 3)
            or int(self.lengths.sum()) != self.tokens.size
            or self.tokens.size != self.header.get("n_tokens")
            or len(self.header.get("sources", [])) != n_pairs
        ):
            raise PreferenceFormatError(f"{arrays}: the arrays do not match the counts in {self.header_path}")
        if n_pairs and int(self.lengths.min()) < 1:
            raise PreferenceFormatError(f"{arrays}: a pair has an empty prompt or response")
        ends = np.cumsum(self.lengths.reshape(-1))
        self._starts = np.concatenate([[0], ends[:-1]]).reshape(-1, 3)

    @property
    def n_pairs(self) -> int:
        return int(self.lengths.shape[0])

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt, chosen, rejected) ids of pair i."""
        return tuple(
            self.tokens[start : start + length].astype(np.int64)
            for start, length in zip(self._starts[i], self.lengths[i])
        )

    def source(self, i: int) -> str:
        return self.header["sources"][i]


def list_preference_shards(directory: str | os.PathLike) -> list[Path]:
    return sorted(Path(directory).glob(f"*{HEADER_SUFFIX}"))


class PreferenceDataset:
    """Every shard of a directory, in name order, as one sequence of pairs."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        headers = list_preference_shards(self.directory)
        if not headers:
            raise PreferenceFormatError(
                f"{self.directory}: no preference shards (*{HEADER_SUFFIX}); write them with "
                f"`python -m data_pipeline preference input=... output={self.directory} tokenizer=...`"
            )
        self.shards = [PreferenceShard(h) for h in headers]
        tokenizers = {json.dumps(s.header.get("tokenizer"), sort_keys=True) for s in self.shards}
        if len(tokenizers) > 1:
            raise PreferenceFormatError(f"{self.directory}: shards were tokenised with different tokenizers")
        self.tokenizer: dict = self.shards[0].header.get("tokenizer") or {}
        self._firsts = np.cumsum([0] + [s.n_pairs for s in self.shards])

    @property
    def n_pairs(self) -> int:
        return int(self._firsts[-1])

    @property
    def max_token_id(self) -> int:
        return max(int(s.header["max_token_id"]) for s in self.shards)

    def _locate(self, i: int) -> tuple[PreferenceShard, int]:
        shard = int(np.searchsorted(self._firsts, i, side="right")) - 1
        return self.shards[shard], i - int(self._firsts[shard])

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shard, local = self._locate(i)
        return shard.pair(local)

    def source(self, i: int) -> str:
        shard, local = self._locate(i)
        return shard.source(local)

    def fingerprint(self) -> str:
        """Names and content hashes of the shards: what a resumed run must find again."""
        parts = [f"{s.header_path.name}:{s.header['arrays_sha256']}" for s in self.shards]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
