"""Turn HTML documents into their main text (trafilatura; options and why in data_pipeline/extraction.py). The
page's HTML is the document's text on input (WARC responses, or `text_key=html` on JSONL); the extracted text
replaces it. What a page yields depends on that page alone: no memory across pages, so order and sharding do not
change it.

A page that yields no text is excluded with the reason, its value the characters extracted and the threshold
`min_chars`: `no_text:not_html` (the input has no HTML tag: plain text under the HTML key), `no_text:extractor_error`
(trafilatura raised; the record's `excluded_error` says what), `no_text:empty` (no main text found) and
`no_text:too_short` (fewer than `min_chars` characters). Counters `no_text.<reason>` say how many.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from data_pipeline.document import Document
from data_pipeline.extraction import EXTRACTION_OPTIONS, extract_text, looks_like_html
from data_pipeline.steps.base import Step


class Extract(Step):
    name = "extract"

    def __init__(
        self,
        favor_precision: bool = EXTRACTION_OPTIONS["favor_precision"],
        favor_recall: bool = EXTRACTION_OPTIONS["favor_recall"],
        include_tables: bool = EXTRACTION_OPTIONS["include_tables"],
        include_comments: bool = EXTRACTION_OPTIONS["include_comments"],
        min_chars: int = 1,
    ) -> None:
        super().__init__()
        if favor_precision and favor_recall:
            raise ValueError("extract: favor_precision and favor_recall both true; pick one (or neither: balanced)")
        if int(min_chars) < 1:
            raise ValueError(f"extract.min_chars={min_chars}: at least 1 (a page with no text is never kept)")
        self.options = {
            "favor_precision": favor_precision,
            "favor_recall": favor_recall,
            "include_tables": include_tables,
            "include_comments": include_comments,
        }
        self.min_chars = int(min_chars)

    def _exclude(self, doc: Document, reason: str, chars: int, error: Optional[str] = None) -> None:
        self.context.count(f"no_text.{reason}")
        details = {"error": error} if error is not None else {}
        self.context.exclude(doc, f"no_text:{reason}", chars, self.min_chars, **details)

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            if not looks_like_html(doc.text):
                self._exclude(doc, "not_html", 0)
                continue
            try:
                text = (extract_text(doc.text, **self.options) or "").strip()
            except Exception as exc:  # a page trafilatura cannot parse is that page's problem, not the run's
                self._exclude(doc, "extractor_error", 0, f"{type(exc).__name__}: {exc}"[:500])
                continue
            if not text:
                self._exclude(doc, "empty", 0)
                continue
            if len(text) < self.min_chars:
                self._exclude(doc, "too_short", len(text))
                continue
            self.context.count("html_chars", len(doc.text))
            yield Document(doc.id, text, doc.metadata)
