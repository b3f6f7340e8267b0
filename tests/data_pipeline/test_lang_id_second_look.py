"""Language ID on pages that are mostly tables or commands: real English prose followed by a table of numbers got
py3langid's `zxx` (no linguistic content) on the whole text and was dropped; the second look on the page's prose
lines keeps it. A page in another language with the same table is still dropped, and every exclusion keeps its
rule, value and threshold."""

from __future__ import annotations

import inspect
import json

from test_web_text import gettext_samples

from data_pipeline.document import Document
from data_pipeline.steps import build_step
from data_pipeline.steps.lang_id import prose_lines

TABLE = "\n".join(f"{i:>4} {i * i:>8} {i * 7919 % 10007:>6} 0x{i * 2654435761 % 2**32:08x}" for i in range(1, 41))


def english_prose() -> str:
    paragraphs = [" ".join(p.split()) for p in inspect.getdoc(json).split("\n\n") if len(p.split()) > 15]
    paragraphs = [p for p in paragraphs if not p.startswith((">>>", "$"))]  # prose, not the examples
    return "\n".join(paragraphs[:3])


def test_english_page_of_tables_is_kept_by_the_second_look_on_its_prose():
    page = english_prose() + "\n" + TABLE
    step = build_step("lang_id")
    assert step._predict(page)[0] == "zxx"  # what dropped such pages: the table decides the whole-text label
    assert prose_lines(page) == english_prose()
    kept = step([Document("page", page)])
    assert len(kept) == 1 and kept[0].metadata["language"] == "en" and kept[0].metadata["language_score"] >= 0.65
    assert step.context.counters["language.second_look_kept"] == 1


def test_other_languages_with_the_same_table_are_still_dropped_with_value_and_threshold():
    samples = gettext_samples()
    step = build_step("lang_id", {"min_prose_chars": 100})
    docs = [Document(code, samples[code].replace(". ", ".\n") + "\n" + TABLE) for code in ("fr", "de", "es")]
    assert step(docs) == []
    for doc, rule, details in step.context.excluded:
        assert rule == "lang_id:other_language" and doc.metadata["language"] in (doc.id, "zxx"), (doc.id, rule)
        assert isinstance(details["value"], float) and details["threshold"] == ["en"]
    assert step.context.counters["language.second_look_kept"] == 0


def test_prose_lines_leave_out_code_commands_paths_and_fenced_blocks():
    text = "Install it as follows.\n$ pip install loom\n    import loom\n```\nloom.run()\n```\n/usr/share/1/2\n"
    text += "Done with it."
    assert prose_lines(text) == "Install it as follows.\nDone with it."
