"""Read an offline wandb run file (`run-<id>.wandb`) back, with wandb's own protobuf definitions.

wandb 0.31 ships no public reader for these files (the writer lives in its Go core, the old Python DataStore
is gone), so the framing is decoded here: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB blocks
of LevelDB-log records (CRC-32 of type + payload, little-endian length, type FULL/FIRST/MIDDLE/LAST, payload),
each payload one serialized `wandb_internal_pb2.Record`. A block's tail shorter than a record header is zero
padding. Checksums are verified, so a torn or corrupt file fails loudly instead of reading as shorter history.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a wandb run file (header {ident!r} {magic:#x} v{version})")
    pos, pending = HEADER.size, b""
    while pos < len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < RECORD_HEADER.size:
            pos += left_in_block  # zero padding at the end of a block
            continue
        if pos + RECORD_HEADER.size > len(data):
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        checksum, length, kind = RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0 and checksum == 0:
            pos += left_in_block  # the zero-filled rest of the last block
            continue
        start = pos + RECORD_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) != length:
            raise ValueError(f"{path}: truncated record at byte {pos}")
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: checksum mismatch in the record at byte {pos}")
        pos = start + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    out = []
    for payload in payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        out.append(record)
    return out


def history_steps(recs: list[Any]) -> list[int]:
    """The step of every history row, in file order."""
    return [r.history.step.num for r in recs if r.WhichOneof("record_type") == "history"]


def history_rows(recs: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            row["_step_num"] = r.history.step.num
            rows.append(row)
    return rows


def run_record(recs: list[Any]) -> Any:
    return next(r.run for r in recs if r.WhichOneof("record_type") == "run")


def config_values(recs: list[Any]) -> dict[str, Any]:
    """The run's config as logged: the run record's, then every config update over it."""
    values: dict[str, Any] = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for item in items:
            key = item.key or "/".join(item.nested_key)
            values[key] = json.loads(item.value_json)
    return values


def runs_in_order(wandb_dir) -> list[list[Any]]:
    """The records of every offline run file under `wandb_dir`, oldest run first (by the run's start time: the
    directory names have one-second resolution)."""
    runs = [records(path) for path in Path(wandb_dir).glob("offline-run-*/run-*.wandb")]
    return sorted(runs, key=lambda recs: run_record(recs).start_time.ToNanoseconds())


def history_and_summary(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The history rows (in order) and the final summary of one offline run file."""
    history, summary = [], {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            summary.update(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.summary.update}
            )
    return history, summary
