"""Drop documents whose URL is on a block list: a blocked domain (or any subdomain of one) or a blocked substring
anywhere in the URL (case-insensitive). Lists come inline or from files (one entry per line, `#` comments), e.g.
the UT1 adult/malware lists FineWeb used. A document without a URL (`url_key` missing) is kept and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlsplit

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject


def read_list(path: str, key: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"url_filter.{key}={path}: file not found")
    return [
        line.split("#", 1)[0].strip()
        for line in file.read_text(encoding="utf-8").splitlines()
        if line.split("#", 1)[0].strip()
    ]


class UrlFilter(FilterStep):
    name = "url_filter"

    def __init__(
        self,
        blocked_domains: Sequence[str] = (),
        blocked_domains_file: Optional[str] = None,
        blocked_substrings: Sequence[str] = (),
        blocked_substrings_file: Optional[str] = None,
        url_key: str = "url",
    ) -> None:
        super().__init__()
        domains = list(blocked_domains) + (
            read_list(blocked_domains_file, "blocked_domains_file") if blocked_domains_file else []
        )
        substrings = list(blocked_substrings) + (
            read_list(blocked_substrings_file, "blocked_substrings_file") if blocked_substrings_file else []
        )
        self.domains = frozenset(d.lower().strip(".") for d in domains)
        self.substrings = tuple(s.lower() for s in substrings)
        self.url_key = url_key

    def enabled(self) -> bool:
        return bool(self.domains or self.substrings)

    def filter(self, doc: Document) -> Verdict:
        url = doc.metadata.get(self.url_key)
        if not url:
            self.context.count("url_filter.no_url")
            return True
        url = str(url).lower()
        host = (urlsplit(url if "//" in url else "//" + url).hostname or "").strip(".")
        labels = host.split(".")
        for i in range(len(labels)):
            domain = ".".join(labels[i:])
            if domain in self.domains:
                return reject("blocked_domain", domain, "blocked_domains", url=url)
        for substring in self.substrings:
            if substring in url:
                return reject("blocked_substring", substring, "blocked_substrings", url=url)
        return True
