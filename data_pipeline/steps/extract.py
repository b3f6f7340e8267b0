"""Turn HTML documents into their main text (trafilatura; see data_pipeline/extraction.py). The page's HTML is
the document's text on input (WARC responses, or `text_key=html` on JSONL); the extracted text replaces it. A page
with less than `min_chars` of main text is excluded as `no_text`, with the characters found as its value.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from data_pipeline.document import Document
from data_pipeline.extraction import extract_text
from data_pipeline.steps.base import Step


class Extract(Step):
    name = "extract"

    def __init__(
        self,
        favor_precision: bool = True,
        include_tables: bool = True,
        include_comments: bool = False,
        deduplicate: bool = True,
        min_chars: int = 1,
    ) -> None:
        super().__init__()
        self.options = {
            "favor_precision": favor_precision,
            "include_tables": include_tables,
            "include_comments": include_comments,
            "deduplicate": deduplicate,
        }
        self.min_chars = min_chars

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            text = (extract_text(doc.text, **self.options) or "").strip()
            if len(text) < self.min_chars:
                self.context.exclude(doc, "no_text", len(text), self.min_chars)
                continue
            self.context.count("html_chars", len(doc.text))
            yield Document(doc.id, text, doc.metadata)
