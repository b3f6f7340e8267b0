"""A corpus of real text nobody on this project wrote, gathered at test time from what every machine that runs the
tests has: the long descriptions (READMEs) in the installed packages' metadata, the docstrings of Python's standard
library, and Debian's /usr/share/common-licenses where present. Mostly hard-wrapped prose, the kind of text the
old C4-first heuristics cut to pieces."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from pathlib import Path

STDLIB_MODULES = (
    "argparse",
    "asyncio",
    "bisect",
    "calendar",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fractions",
    "functools",
    "gettext",
    "heapq",
    "http.client",
    "http.server",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "multiprocessing",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pdb",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "typing",
    "unittest",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "zipfile",
    "zipimport",
)


def _words(text: str) -> int:
    return len(text.split())


def package_descriptions(min_words: int = 80) -> list[tuple[str, str]]:
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        body = body or dist.metadata.get("Description") or ""
        if name and _words(body) >= min_words:
            out.setdefault(f"pkg:{name.lower()}", body)
    return sorted(out.items())


def stdlib_docstrings(min_words: int = 80) -> list[tuple[str, str]]:
    out = []
    for module_name in STDLIB_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        docs = [(module_name, inspect.getdoc(module) or "")]
        docs += [
            (f"{module_name}.{name}", inspect.getdoc(obj) or "")
            for name, obj in sorted(vars(module).items())
            if inspect.isclass(obj) and getattr(obj, "__module__", None) == module.__name__ and not name.startswith("_")
        ]
        out += [(f"py:{name}", doc) for name, doc in docs if _words(doc) >= min_words]
    return out


def common_licenses(min_words: int = 80) -> list[tuple[str, str]]:
    root = Path("/usr/share/common-licenses")
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        if path.is_file() and not path.is_symlink():
            text = path.read_text(encoding="utf-8", errors="replace")
            if _words(text) >= min_words:
                out.append((f"license:{path.name}", text))
    return out


def real_text_corpus() -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(id, text) pairs and how many came from each source."""
    sources = {"packages": package_descriptions(), "stdlib": stdlib_docstrings(), "licenses": common_licenses()}
    return [doc for docs in sources.values() for doc in docs], {k: len(v) for k, v in sources.items()}
