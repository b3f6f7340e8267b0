"""Text from web pages: the main content of an HTML page (trafilatura, as FineWeb) and the decoding of an HTTP
body into the page's text.

What a page yields depends on that page only. trafilatura's `deduplicate=True` (FineWeb's setting) keeps an LRU
cache of text across every page the process has extracted and drops paragraphs it has seen before, so a page's
text depended on the pages before it: on 3,318 pages of Debian's handbook and reference, 598 came out empty and
6.5% of all characters were lost, and none of the 598 is empty when extracted alone. Repeated text is the dedup
steps' job (exact_dedup, minhash_dedup, boilerplate_dedup), which decide on the whole corpus whatever the order;
here it is always off and not an option.

Options (`EXTRACTION_OPTIONS`, each overridable on the extract step): trafilatura's balanced default, neither
`favor_precision` (FineWeb's choice) nor `favor_recall`. Measured on 725 real documentation pages (Rust's book,
reference, nomicon and error index, Node.js and npm docs, valgrind, libxslt, libffi, libtasn1): precision kept
1.8% fewer characters than the default and recall 0.1% more; what precision cut was headings (all 13 section
titles of the Rust book's "Data Types" page), whole short pages (4 empty, 0 with the default; libffi's "Types"
is a table of contents) and the link lists of libxslt's API indexes, and on Debian's handbook it halved some
pages (31,630 vs 15,146 characters). Headings are content; link-list pages are left to boilerplate_dedup and the
heuristics, which see the whole corpus. The default still drops navigation, headers, footers, cookie banners and
"related posts" of an article page (tests/data_pipeline/test_web_text.py). Cross-page deduplication changed 61
of the 725 pages, losing 44,769 characters. Tables are kept (much documentation is tables); comments, links and
images are not; output is plain text. trafilatura keeps the indentation of `<pre>` blocks but drops the blank
lines inside them.

On its own, importing no reader, because it reads no file: the extract step (data_pipeline/steps/extract.py)
calls `extract_text` on documents already read, and the WARC reader (data_pipeline/readers.py) calls
`decode_body` on each HTML response.
"""

from __future__ import annotations

import re
from typing import Any, Optional

EXTRACTION_OPTIONS: dict[str, Any] = {
    "favor_precision": False,
    "favor_recall": False,
    "include_tables": True,
    "include_comments": False,
}
# Something that opens like an HTML element, doctype or comment: what a page has and plain text has not.
_HTML_TAG = re.compile(r"<(?:!doctype|!--|[a-zA-Z][a-zA-Z0-9]*[\s>/])", re.IGNORECASE)


def looks_like_html(text: str) -> bool:
    return _HTML_TAG.search(text) is not None


def extract_text(html: str, **options: Any) -> Optional[str]:
    """The main text of a page, or None when trafilatura finds none. `options` override EXTRACTION_OPTIONS;
    cross-page deduplication is always off (see the module docstring)."""
    import trafilatura

    unknown = set(options) - set(EXTRACTION_OPTIONS)
    if unknown:
        raise TypeError(f"extract_text: unknown options {sorted(unknown)}; known: {sorted(EXTRACTION_OPTIONS)}")
    return trafilatura.extract(
        html,
        **{**EXTRACTION_OPTIONS, **options},
        deduplicate=False,
        include_links=False,
        include_images=False,
        output_format="txt",
    )


def decode_body(body: bytes, content_type: str) -> str:
    """Decode with the charset the headers declare, else UTF-8, else the best guess of charset_normalizer."""
    charset = None
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip("\"' ")
    for encoding in (charset, "utf-8"):
        if encoding:
            try:
                return body.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                continue
    from charset_normalizer import from_bytes

    best = from_bytes(body).best()
    if best is None:
        raise UnicodeDecodeError("unknown", body[:1], 0, 1, "no charset declared or detected decodes the body")
    return str(best)
