"""Indented code keeps its indentation byte for byte through normalisation (the step that used to strip every
line), in plain indented blocks, tab-indented lines and fenced blocks, while prose lines are still tidied."""

from __future__ import annotations

import inspect
import json

from data_pipeline.document import Document
from data_pipeline.steps import build_step


def real_code() -> str:
    """Indented Python from the standard library: real code nobody here wrote."""
    import json.decoder

    return inspect.getsource(json.decoder.JSONDecoder.raw_decode)


def test_indented_code_keeps_its_indentation_byte_for_byte():
    code = real_code()
    indented = [line for line in code.splitlines() if line[:1] == " "]
    assert len(indented) >= 5
    prose = "To  decode a   document\tthat starts with JSON, call raw_decode:  "
    fenced = "```\nx  =  {\n\t'a':   1,\n}\n```"
    text = f"{prose}\n\n{code}\n{fenced}\n\nAfter   the block,  prose again.   "
    out = build_step("normalize")([Document("doc", text)])[0].text
    for line in indented:
        assert line.rstrip() + "\n" in out + "\n", line
    assert "\n".join(line.rstrip() for line in code.splitlines()) in out  # the whole block, line for line
    assert fenced in out
    assert out.startswith("To decode a document that starts with JSON, call raw_decode:\n")
    assert out.endswith("\n\nAfter the block, prose again.")
    assert build_step("normalize", {"indentation": "strip"})([Document("doc", text)])[0].text.count("\n ") == 0


def test_first_line_indentation_survives_and_tab_indentation_is_not_rewritten():
    text = "\n\n    first = 1\n\tsecond = 2  \n"
    assert build_step("normalize")([Document("d", text)])[0].text == "    first = 1\n\tsecond = 2"


def test_code_in_a_web_page_keeps_its_indentation_through_extract_normalize_and_pii():
    import html

    code = real_code()
    prose = " ".join(inspect.getdoc(json).split("\n\n")[0].split())
    page = (
        f"<html><body><main><article><h1>raw_decode</h1><p>{html.escape(prose)}</p>"
        f"<pre><code>{html.escape(code)}</code></pre><p>{html.escape(prose)}</p></article></main></body></html>"
    )
    docs = [Document("page", page)]
    for name in ("extract", "normalize", "pii"):
        docs = build_step(name)(docs)
    # Every non-blank line byte for byte and in order (trafilatura itself drops the blank lines inside <pre>).
    assert "\n".join(line.rstrip() for line in code.splitlines() if line.strip()) in docs[0].text
