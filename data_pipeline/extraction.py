"""Text from web pages: the main content of an HTML page (trafilatura, as FineWeb) and the decoding of an HTTP
body into the page's text.

trafilatura drops navigation, headers, footers, cookie banners and link lists by its own rules; `favor_precision`
(FineWeb's setting) prefers leaving out a doubtful block to keeping boilerplate.

On its own, importing no reader, because it reads no file: the extract step (data_pipeline/steps/extract.py)
calls `extract_text` on documents already read, and the WARC reader (data_pipeline/readers.py) calls
`decode_body` on each HTML response.
"""

from __future__ import annotations

from typing import Optional


def extract_text(
    html: str,
    favor_precision: bool = True,
    include_tables: bool = True,
    include_comments: bool = False,
    deduplicate: bool = True,
) -> Optional[str]:
    """The main text of a page, or None when trafilatura finds none."""
    import trafilatura

    return trafilatura.extract(
        html,
        favor_precision=favor_precision,
        include_tables=include_tables,
        include_comments=include_comments,
        deduplicate=deduplicate,
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
