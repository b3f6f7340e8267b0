"""Extraction depends only on the page: the same page gives the same text alone and after 1,000 other pages that
repeat its paragraphs (trafilatura's cross-page `deduplicate` emptied such pages: order decided what was kept).
And a page that yields nothing is recorded with its reason. Pages are real prose (the standard library's
docstrings) in a page template; real HTML documentation on the machine is used too where it is installed."""

from __future__ import annotations

import glob
import html
import inspect
import os

import pytest

from data_pipeline.document import Document
from data_pipeline.steps import build_step

MODULES = ("difflib", "argparse", "textwrap", "heapq", "logging", "json", "csv", "fractions", "pathlib", "shlex")


def paragraphs() -> list[str]:
    out = []
    for name in MODULES:
        doc = inspect.getdoc(__import__(name)) or ""
        out += [" ".join(p.split()) for p in doc.split("\n\n") if len(p.split()) >= 12 and ">>>" not in p]
    return out


def page(title: str, body: list[str]) -> str:
    text = "".join(f"<p>{html.escape(p)}</p>" for p in body)
    return (
        f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>"
        f"<main><article><h1>{html.escape(title)}</h1>{text}</article></main></body></html>"
    )


def test_a_page_gives_the_same_text_alone_and_after_a_thousand_others():
    prose = paragraphs()
    assert len(prose) >= 12
    target = Document("target", page("Target", prose[:6]))
    # Every other page repeats two of the target's paragraphs among text of its own.
    others = [
        Document(f"o{i}", page(f"Other {i}", [prose[i % 6], prose[(i + 1) % 6], prose[6 + i % (len(prose) - 6)]]))
        for i in range(1000)
    ]
    alone = build_step("extract")([target])
    after = build_step("extract")(others + [target])
    assert len(alone) == 1 and alone[0].text
    assert after[-1].id == "target" and after[-1].text == alone[0].text
    assert len(after) == 1001  # none of the others came out empty either


REAL_HTML = sorted(
    {
        f
        for pattern in ("/usr/share/doc/*/html/*.html", "/usr/share/doc/*/*/*.html")
        for f in glob.glob(pattern)
        if 2_000 < os.path.getsize(f) < 40_000  # small pages: the test stays within seconds
    }
)[:60]


@pytest.mark.skipif(len(REAL_HTML) < 20, reason="no HTML documentation installed on this machine")
def test_real_pages_give_the_same_text_in_any_order():
    docs = [Document(path, open(path, encoding="utf-8", errors="replace").read()) for path in REAL_HTML]
    forward = {d.id: d.text for d in build_step("extract")(docs)}
    backward = {d.id: d.text for d in build_step("extract")(docs[::-1])}
    assert forward == backward and len(forward) >= 0.9 * len(docs)


def test_a_page_without_text_is_recorded_with_its_reason():
    prose = paragraphs()
    step = build_step("extract", {"min_chars": 200})
    docs = [
        Document("plain", "Just a line of plain text, no markup at all."),
        Document("empty", "<html><head><title>t</title></head><body><div></div></body></html>"),
        Document("short", page("Short", ["A page with one short paragraph of text only."])),
        Document("good", page("Good", prose[:3])),
    ]
    kept = step(docs)
    assert [d.id for d in kept] == ["good"]
    records = {doc.id: (rule, details) for doc, rule, details in step.context.excluded}
    assert records["plain"][0] == "extract:not_html" and records["empty"][0] == "extract:empty"
    assert records["short"][0] == "extract:too_short"
    assert 0 < records["short"][1]["value"] < 200 and records["short"][1]["threshold"] == 200
    assert all("value" in details and details["threshold"] == 200 for _, details in records.values())
    assert step.context.counters["no_text.not_html"] == 1


def test_an_extractor_error_excludes_the_page_with_the_error(monkeypatch):
    import trafilatura

    def broken(*args, **kwargs):
        raise ValueError("parser gave up")

    monkeypatch.setattr(trafilatura, "extract", broken)
    step = build_step("extract")
    assert step([Document("bad", page("Bad", ["Some text that will never be read by anyone."]))]) == []
    ((doc, rule, details),) = step.context.excluded
    assert rule == "extract:extractor_error" and details["error"] == "ValueError: parser gave up"
    assert (details["value"], details["threshold"]) == (0, 1)
