"""Text from web pages: the main content of an HTML page (trafilatura, as FineWeb) and the HTML responses of a
WARC file (warcio), read record by record.

trafilatura drops navigation, headers, footers, cookie banners and link lists by its own rules; `favor_precision`
(FineWeb's setting) prefers leaving out a doubtful block to keeping boilerplate. WARC records that are not HTTP
responses with an HTML body (requests, metadata, images) are not documents and are skipped; a response whose
body cannot be decoded becomes a quarantine record naming the file, the record and the reason.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Union

from data_pipeline.document import Document

HTML_TYPES = ("text/html", "application/xhtml+xml")


def extract_text(html: str, favor_precision: bool = True, include_tables: bool = True, include_comments: bool = False,
                 deduplicate: bool = True) -> Optional[str]:
    """The main text of a page, or None when trafilatura finds none."""
    import trafilatura

    return trafilatura.extract(
        html, favor_precision=favor_precision, include_tables=include_tables, include_comments=include_comments,
        deduplicate=deduplicate, include_links=False, include_images=False, output_format="txt",
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


def warc_rows(path: Path, source: str, max_doc_chars: int = 1_000_000) -> Iterator[Union[Document, "Quarantined"]]:
    """Documents (HTML in `text`, url/date/record id in metadata) of the HTML responses of one WARC file."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    from data_pipeline.io import RAW_PREVIEW_CHARS, Quarantined

    with open(path, "rb") as stream:
        number = 0
        try:
            for record in ArchiveIterator(stream):
                number += 1
                if record.rec_type != "response" or record.http_headers is None:
                    continue
                content_type = record.http_headers.get_header("Content-Type") or ""
                if not content_type.lower().startswith(HTML_TYPES):
                    continue
                url = record.rec_headers.get_header("WARC-Target-URI")
                record_id = record.rec_headers.get_header("WARC-Record-ID") or f"{source}:{number}"
                body = record.content_stream().read()
                try:
                    html = decode_body(body, content_type)
                except UnicodeDecodeError as exc:
                    yield Quarantined(f"undecodable_html:{exc.reason}", source, number, body[:RAW_PREVIEW_CHARS].decode("utf-8", "replace"))
                    continue
                if len(html) > max_doc_chars:
                    yield Quarantined(f"too_large:{len(html)}_chars", source, number, html[:RAW_PREVIEW_CHARS])
                    continue
                metadata = {"url": url, "date": record.rec_headers.get_header("WARC-Date"), "content_type": content_type}
                yield Document(id=record_id.strip("<>"), text=html, metadata=metadata)
        except ArchiveLoadFailed as exc:
            yield Quarantined(f"invalid_warc:{str(exc).splitlines()[0][:200]}", source, number + 1, "")
