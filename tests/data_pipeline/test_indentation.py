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


def licence_prose() -> list[str]:
    """The GPL-3 preamble's paragraphs, one line each: real prose the heuristics keep."""
    from pathlib import Path

    gpl = Path("/usr/share/common-licenses/GPL-3").read_text()
    preamble = gpl[gpl.index("Preamble") : gpl.index("TERMS AND CONDITIONS")]
    return [" ".join(p.split()) for p in preamble.split("\n\n")[1:] if p.strip()]


def run_clean_pipeline(tmp_path, text: str, overrides: tuple[str, ...] = ()) -> dict[str, str]:
    from data_pipeline.cli import compose_config, run_pipeline
    from data_pipeline.synthetic import generate_clean_documents

    rows = [{"id": "with-code", "text": text}]
    rows += [{"id": f"clean{i}", "text": t} for i, t in enumerate(generate_clean_documents(20, seed=3))]
    tmp_path.mkdir()
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = compose_config(["pipeline=clean", f"input={source}", f"output={out}", "tasks=1", "report=false", *overrides])
    run_pipeline(cfg)
    return {r["id"]: r["text"] for r in map(json.loads, (out / "pii" / "shard-00000.jsonl").read_text().splitlines())}


def test_indented_code_in_a_kept_document_survives_the_default_cleaning_steps(tmp_path):
    """pipeline=clean (the default pipeline without tokenize): normalize, the heuristics (whose C4 decides on
    stripped lines and drops short ones from its view), dedup, PII: the kept document's code block comes out byte
    for byte, short lines (`return obj, end`) included."""
    code = real_code()
    assert any(0 < len(line.split()) < 3 for line in code.splitlines())  # lines C4's view drops
    prose = licence_prose()
    text = "\n\n".join(prose[:4]) + "\n\n" + code + "\n" + "\n\n".join(prose[4:8])
    kept = run_clean_pipeline(tmp_path / "none", text)
    assert "with-code" in kept
    block = "\n".join(line.rstrip() for line in code.splitlines())  # normalize trims trailing spaces only
    assert block in kept["with-code"]
    # datatrove's writing (c4.rewrite: datatrove) keeps the same documents but strips and drops code lines.
    as_datatrove = run_clean_pipeline(tmp_path / "datatrove", text, ("pipeline.steps.1.params.c4.rewrite=datatrove",))
    assert set(as_datatrove) == set(kept) and block not in as_datatrove["with-code"]
