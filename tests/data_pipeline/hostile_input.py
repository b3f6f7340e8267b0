"""A raw input written to break readers: a 10,000-line JSONL file mixing valid documents with every kind of bad row,
and a truncated .gz, with the outcome expected for every line (a document, or the quarantine reason).

Valid documents are paragraphs of CPython's own documentation (pydoc_data, real prose nobody here wrote) and the
project's procedural corpus. Each document's id names its file and line (`m<line>`, `g<line>`; documents without
an id get `<file>:<line>` from the reader), so outputs can be traced back to the exact input line.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.synthetic import generate_clean_documents

MIXED = "mixed.jsonl"
GZ = "truncated.jsonl.gz"
N_LINES = 10_000
N_GZ_LINES = 400
TEN_MB = 10 * 1024 * 1024
DOCUMENT = "document"  # expected outcome of a valid row: kept or excluded by a step, never quarantined


def _real_paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    paragraphs = {p.strip() for text in topics.values() for p in text.split("\n\n") if len(p.split()) >= 20}
    return sorted(paragraphs)


def _bad_rows(rng: random.Random, text: str) -> list[tuple[bytes, str]]:
    """(line bytes, expected quarantine reason) for every kind of bad row; `{id}` is filled in with the line id."""
    dump = lambda obj: json.dumps(obj).encode()  # noqa: E731  (ASCII: escapes such as \ud800 stay escapes)
    escaped = json.dumps(text[:200])[1:-1].encode()  # the text as it sits inside a JSON string
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        (b'{"id": "{id}", "text": "unterminated', "invalid_json"),
        (b'{"id": "{id}", "text": "raw NUL \x00 byte"}', "invalid_json"),  # control character inside a string
        (b'{"id": "{id}", "text": "caf\xe9 ' + escaped + b'"}', "invalid_utf8:text"),
        (b'{"id": "{id}", "text": "' + escaped + b'", "meta": {"url": "http://x/\xff\xfe"}}', "invalid_utf8:meta.url"),
        (b'{"id": "{id}", "text": "' + escaped + b'\\ud800 tail"}', "lone_surrogate:text"),
        (dump({"id": "bad\ud800id", "text": text}), "lone_surrogate:id"),
        (dump({"id": "{id}", "text": text, "tags": ["ok", "x\udfff"]}), "lone_surrogate:tags.1"),
        (dump({"id": "{id}", "text": text, "meta": {"k\ud801": 1}}), "lone_surrogate:meta.<key"),
        (dump({"id": "{id}", "text": text[:150] + "\x00" + text[150:]}), "nul_character:text"),
        (dump({"id": "{id}\x00", "text": text}), "nul_character:id"),
        (dump({"id": "{id}", "text": text, "source": "web\x00"}), "nul_character:source"),
        (b"", "empty_line"),
        (b"   \t ", "empty_line"),
        (dump({"id": "{id}", "text": None}), "text_not_string:NoneType"),
        (dump({"id": "{id}", "text": rng.randint(0, 10**6)}), "text_not_string:int"),
        (dump({"id": "{id}", "text": 3.25}), "text_not_string:float"),
        (dump({"id": "{id}", "body": text}), "missing_field:text"),
        (dump(["{id}", text]), "not_an_object"),
        (b"12345", "not_an_object"),
        (dump({"id": "{id}", "text": " \n\t "}), "empty_document"),
        (b'{"id": "{id}", "text": "x", "n": ' + b"9" * 5000 + b"}", "invalid_json"),  # past Python's int digit limit
        (b'{"id": "{id}", "text": "x", "deep": ' + deep + b"}", "invalid_json"),
    ]


@dataclass
class HostileInput:
    directory: Path
    expected: dict[str, dict[int, str]] = field(default_factory=dict)  # file -> line (1-based) -> outcome
    gz_truncated_at: int = 0  # compressed size of the truncated .gz

    def line_of(self, doc_id: str) -> tuple[str, int]:
        """The input line a document id came from."""
        if doc_id.startswith(f"{MIXED}:"):
            return MIXED, int(doc_id.rsplit(":", 1)[1])
        return {"m": MIXED, "g": GZ}[doc_id[0]], int(doc_id[1:])


def write_hostile_input(directory: Path, seed: int = 0) -> HostileInput:
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    texts = _real_paragraphs() + generate_clean_documents(N_LINES, seed=seed)
    rng.shuffle(texts)
    result = HostileInput(directory)

    # mixed.jsonl: every bad kind 12 times at random lines, 1 ten-megabyte document, exact duplicates of earlier
    # documents, documents without an id, CRLF endings; a BOM before line 1 and a truncated last line.
    slots = list(range(2, N_LINES))  # line 1 (BOM) and the last line (truncated) are fixed below
    rng.shuffle(slots)
    planned: dict[int, tuple[bytes, str]] = {}
    for kind in range(len(_bad_rows(rng, "x"))):
        for _ in range(12):
            line = slots.pop()
            planned[line] = _bad_rows(rng, texts[line % len(texts)])[kind]
    huge = slots.pop()
    planned[huge] = (
        json.dumps({"id": "{id}", "text": ("ten megabytes " * (TEN_MB // 14 + 1))[:TEN_MB]}).encode(),
        "too_large",
    )
    lines: list[bytes] = []
    outcomes: dict[int, str] = {}
    duplicates = set(slots[:40])
    no_id = set(slots[40:80])
    crlf = set(slots[80:120])
    for line in range(1, N_LINES + 1):
        doc_id = f"m{line}"
        if line in planned:
            raw, outcome = planned[line]
            raw = raw.replace(b"{id}", doc_id.encode())
        elif line == N_LINES:
            raw, outcome = json.dumps({"id": doc_id, "text": texts[line]}).encode()[:57], "invalid_json"
        else:
            text = texts[line - 5] if line in duplicates and line > 5 else texts[line]
            record = {"text": text, "source": "docs"} if line in no_id else {"id": doc_id, "text": text, "lang": "en"}
            raw, outcome = json.dumps(record, ensure_ascii=line % 2 == 0).encode(), DOCUMENT
            if line in crlf:
                raw += b"\r"
        lines.append(raw)
        outcomes[line] = outcome
    (directory / MIXED).write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines))  # BOM; no newline after the cut last line
    result.expected[MIXED] = outcomes

    # truncated.jsonl.gz: valid documents, compressed, cut at 60%: the complete lines are read, then one record
    gz_lines = [json.dumps({"id": f"g{i}", "text": texts[N_LINES + i]}).encode() for i in range(1, N_GZ_LINES + 1)]
    compressed = gzip.compress(b"\n".join(gz_lines) + b"\n", mtime=0)
    cut = compressed[: len(compressed) * 6 // 10]
    (directory / GZ).write_bytes(cut)
    readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(cut)  # independent of the reader under test
    complete = readable.count(b"\n")
    result.expected[GZ] = {i: DOCUMENT for i in range(1, complete + 1)}
    result.expected[GZ][complete + 1] = "compressed_stream_truncated"
    result.gz_truncated_at = len(cut)
    return result
