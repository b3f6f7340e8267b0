"""Lines of a plain, gzip or zstd file, read so that a broken compressed stream costs only what is broken.

`gzip.open` and zstandard's stream reader raise on a truncated or corrupt stream, lose the lines already decoded in
their buffers, and name neither the file nor where it broke. Here the decoders (zlib, zstandard) are fed by hand:
every complete line decoded before the damage is yielded, then one `StreamDamage` says what broke and at which
compressed byte offset, with the decoded bytes of the line the damage cut. Hand-written because no library reads
past-the-damage-aware lines from both formats; it is a loop over `decompressobj`.

Concatenated members (`cat a.gz b.gz`, multi-frame zstd) are read in turn, zero padding after the last member is
ignored (as gzip does), other bytes there are damage. zstd frames without a checksum (zstandard's default) decode
flipped bytes into wrong text without an error: those lines then fail as JSON or UTF-8, one by one.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

CHUNK = 1 << 16
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class StreamDamage:
    """Where a compressed stream stopped decoding, and the decoded bytes of the line it cut."""

    reason: str  # compressed_stream_truncated | compressed_stream_corrupt:<decoder message> | trailing_garbage
    byte_offset: int  # compressed byte offset in the file where decoding stopped
    tail: bytes


class _Damage(Exception):
    def __init__(self, reason: str, byte_offset: int, decoded: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.byte_offset = byte_offset
        self.decoded = decoded  # what the failing chunk decoded to before the failure


def compression_of(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(".gz"):
        return "gz"
    if name.endswith(".zst"):
        return "zst"
    return None


def _decoder(kind: str):
    if kind == "gz":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: zlib checks the trailer's CRC and size
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj()


def _errors(kind: str) -> tuple[type[Exception], ...]:
    if kind == "gz":
        return (zlib.error,)
    import zstandard

    return (zstandard.ZstdError,)


def _starts_member(kind: str, data: bytes) -> bool:
    if kind == "gz":
        return data.startswith(GZIP_MAGIC)
    # a zstd frame, or a skippable frame (magic 0x184D2A50..5F, little endian)
    return data.startswith(ZSTD_MAGIC) or (len(data) >= 4 and data[1:4] == b"\x2a\x4d\x18" and data[0] & 0xF0 == 0x50)


def _decode_until_failure(
    path: Path, kind: str, member_start: int, chunk_start: int, chunk_len: int
) -> tuple[int, bytes]:
    """Where exactly the decoder fails inside a chunk, and what the chunk decodes to before that: decode the member
    again up to the chunk, then the chunk one byte at a time (run once, on the error path only)."""
    decoder, errors = _decoder(kind), _errors(kind)
    decoded: list[bytes] = []
    with open(path, "rb") as f:
        f.seek(member_start)
        remaining = chunk_start - member_start
        while remaining > 0:
            block = f.read(min(CHUNK, remaining))
            decoder.decompress(block)
            remaining -= len(block)
        for i in range(chunk_len):
            try:
                decoded.append(decoder.decompress(f.read(1)))
            except errors:
                return chunk_start + i, b"".join(decoded)
    return chunk_start + chunk_len, b"".join(decoded)


def _decoded_blocks(path: Path, kind: str) -> Iterator[bytes]:
    """Decoded data of every member in turn; raises `_Damage` where the stream breaks."""
    errors = _errors(kind)
    with open(path, "rb") as f:
        decoder = _decoder(kind)
        member_start = position = 0  # position: compressed bytes consumed so far
        data = b""
        while True:
            if not data:
                data = f.read(CHUNK)
                if not data:
                    break
            if decoder is None:  # between members: zero padding (as gzip allows), the next member, or damage
                stripped = data.lstrip(b"\0")
                position, data = position + len(data) - len(stripped), stripped
                if not data:
                    continue
                while len(data) < len(ZSTD_MAGIC) and (more := f.read(CHUNK)):
                    data += more
                if not _starts_member(kind, data):
                    raise _Damage("trailing_garbage", position)
                decoder, member_start = _decoder(kind), position
            try:
                out = decoder.decompress(data)
            except errors as exc:
                offset, decoded = _decode_until_failure(path, kind, member_start, position, len(data))
                raise _Damage(f"compressed_stream_corrupt:{exc}", offset, decoded) from exc
            if decoder.eof:
                used = len(data) - len(decoder.unused_data)
                data, decoder = decoder.unused_data, None
                position += used
            else:
                position += len(data)
                data = b""
            if out:
                yield out
        if decoder is not None and position > member_start:
            raise _Damage("compressed_stream_truncated", position)


def read_lines(path: Path) -> Iterator[Union[bytes, StreamDamage]]:
    """Lines without their newline; for a compressed file that breaks, a last `StreamDamage` instead of the cut line."""
    kind = compression_of(path)
    if kind is None:
        with open(path, "rb") as f:
            for line in f:
                yield line[:-1] if line.endswith(b"\n") else line
        return
    pieces: list[bytes] = []  # the line being assembled across decoded blocks (a 10 MB line spans many)

    def split(block: bytes) -> Iterator[bytes]:
        nonlocal pieces
        parts = block.split(b"\n")
        if len(parts) == 1:
            pieces.append(block)
            return
        pieces.append(parts[0])
        yield b"".join(pieces)
        yield from parts[1:-1]
        pieces = [parts[-1]] if parts[-1] else []

    try:
        for block in _decoded_blocks(path, kind):
            yield from split(block)
    except _Damage as damage:
        yield from split(damage.decoded)
        yield StreamDamage(damage.reason, damage.byte_offset, b"".join(pieces))
        return
    if pieces:
        yield b"".join(pieces)
