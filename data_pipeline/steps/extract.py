"""Turn HTML documents into their main text (trafilatura; options and why in data_pipeline/extraction.py). The
page's HTML is the document's text on input (WARC responses, or `text_key=html` on JSONL); the extracted text
replaces it. What a page yields depends on that page alone: no memory across pages, so order and sharding do not
change it.

A page that yields no text is excluded with the reason, its value the characters extracted and the threshold
`min_chars`: `extract:not_html` (the input has no HTML tag: plain text under the HTML key), `extract:extractor_error`
(trafilatura raised; the record's `excluded_error` says what), `extract:empty` (no main text found) and
`extract:too_short` (fewer than `min_chars` characters). Counters `no_text.<reason>` say how many.
"""

from __future__ import annotations

from data_pipeline.document import Document
from data_pipeline.extraction import EXTRACTION_OPTIONS, extract_text, looks_like_html
from data_pipeline.steps.base import FilterStep, Verdict, reject


class Extract(FilterStep):
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

    def _reject(self, reason: str, chars: int, **details: str) -> Verdict:
        self.context.count(f"no_text.{reason}")
        return reject(reason, chars, self.min_chars, **details)

    def filter(self, doc: Document) -> Verdict:
        if not looks_like_html(doc.text):
            return self._reject("not_html", 0)
        try:
            text = (extract_text(doc.text, **self.options) or "").strip()
        except Exception as exc:  # a page trafilatura cannot parse is that page's problem, not the run's
            return self._reject("extractor_error", 0, error=f"{type(exc).__name__}: {exc}"[:500])
        if not text:
            return self._reject("empty", 0)
        if len(text) < self.min_chars:
            return self._reject("too_short", len(text))
        self.context.count("html_chars", len(doc.text))
        doc.text = text
        return True
