"""A corpus of documentation pages nobody on this project wrote, gathered from the machine that runs the tests:
licences (/usr/share/common-licenses), Debian's package documents (/usr/share/doc: copyright files, change logs,
READMEs, gzipped or not), manual pages as their troff source (/usr/share/man, English sections), reStructuredText
help shipped with installed software (CMake's, Python packages'), and the docstrings of Python's standard library.
Code-heavy pages (troff, reST directives, command listings) are a large part of it on purpose: they are where word
counting differs most between tokenizers.

Deterministic: every source's candidates are sorted by path and an evenly spaced selection of them is read, so the
same machine gives the same corpus. Exact duplicates are dropped (the first by path is kept).

    python -m tests.data_pipeline.machine_docs OUT.jsonl [--target 2600]

writes it as JSONL (`id`, `text`), the input of the pipeline benchmark.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
from pathlib import Path

MIN_CHARS = 400
MAX_BYTES = 400_000  # larger files (whole change-log histories) would dominate the corpus
TEXT_SUFFIXES = (".txt", ".md", ".rst", "")
DOC_NAMES = ("copyright", "changelog", "changelog.Debian", "NEWS", "NEWS.Debian", "README", "README.md", "AUTHORS")

# (source, glob patterns, share of the target)
SOURCES = (
    ("license", ["/usr/share/common-licenses/*"], 0.02),
    ("doc", ["/usr/share/doc/*/*"], 0.38),
    ("man", [f"/usr/share/man/man{section}/*" for section in range(1, 9)], 0.35),
    (
        "rst",
        ["/usr/share/cmake*/Help/**/*.rst", "/usr/lib/python3*/**/*.rst", "/root/.pyenv/versions/*/lib/**/*.rst"],
        0.2,
    ),
)


def _doc_name(path: str) -> bool:
    name = os.path.basename(path)
    stem = name[:-3] if name.endswith(".gz") else name
    return stem in DOC_NAMES or stem.endswith((".txt", ".md", ".rst"))


def _candidates(source: str, patterns: list[str]) -> list[str]:
    paths = set()
    for pattern in patterns:
        paths.update(glob.glob(pattern, recursive=True))
    out = []
    for path in paths:
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        if source == "doc" and not _doc_name(path):
            continue
        try:
            if os.path.getsize(path) > MAX_BYTES:
                continue
        except OSError:
            continue
        out.append(path)
    return sorted(out)


def _read(path: str) -> str:
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_BYTES * 8)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES)
    except (OSError, EOFError):
        return ""
    if b"\0" in data[:4096]:
        return ""  # binary
    return data.decode("utf-8", errors="replace")


def _spread(items: list[str], count: int) -> list[str]:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def stdlib_pages() -> list[tuple[str, str]]:
    from tests.data_pipeline.real_text import stdlib_docstrings

    return stdlib_docstrings(min_words=80)


def machine_documents(target: int = 2600) -> list[tuple[str, str]]:
    """(id, text) pairs, about `target` of them where the machine has enough."""
    docs: list[tuple[str, str]] = []
    for source, patterns, share in SOURCES:
        wanted = max(1, int(target * share))
        paths = _candidates(source, patterns)
        # read a little more than wanted: some files are short, binary or duplicates
        for path in _spread(paths, int(wanted * 1.3)):
            text = _read(path)
            if len(text) >= MIN_CHARS:
                docs.append((f"{source}:{path}", text))
    docs += [(f"py:{name}", text) for name, text in stdlib_pages() if len(text) >= MIN_CHARS]
    seen: set[bytes] = set()
    unique = []
    for doc_id, text in docs:
        digest = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            unique.append((doc_id, text))
    return unique


def write_jsonl(docs: list[tuple[str, str]], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--target", type=int, default=2600)
    args = parser.parse_args()
    docs = machine_documents(args.target)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(docs, args.out)
    print(f"{len(docs)} documents, {sum(len(t) for _, t in docs) / 1e6:.1f} M characters -> {args.out}")


if __name__ == "__main__":
    main()
