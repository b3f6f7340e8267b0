"""The rule-based quality filters as one step: the rule families of `data_pipeline.steps.filters` chained in
FineWeb's order (Gopher repetition -> Gopher quality -> C4 without the terminal-punctuation line rule -> FineWeb),
each with its published defaults.

One step rather than four so a document is read and written once for all of them; each family is also a step of
its own (`gopher_repetition`, `gopher_quality`, `c4`, `fineweb`). A document is removed by the first rule it
fails, recorded as `<family>:<rule>` (the family is a step of its own, so that is `<step>:<rule>`) with the
measured value and the threshold. Parameters: `order` (the families to run, in order) and one entry per family:
true (defaults), false/null (off) or a dict of keyword arguments that override its defaults, e.g.
`c4: {min_sentences: 3}`. The order used before FineWeb's (C4 first, with its terminal-punctuation rule) is
`configs/pipeline/c4_first.yaml`.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, TaskContext, Verdict
from data_pipeline.steps.filters.c4 import C4
from data_pipeline.steps.filters.fineweb import FineWeb
from data_pipeline.steps.filters.gopher_quality import GopherQuality
from data_pipeline.steps.filters.gopher_repetition import GopherRepetition

FAMILIES: dict[str, type[FilterStep]] = {
    "gopher_repetition": GopherRepetition,
    "gopher_quality": GopherQuality,
    "c4": C4,
    "fineweb": FineWeb,
}
FINEWEB_ORDER = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def build_family(family: str, params: Any) -> Optional[FilterStep]:
    """The family's filter with `params` (True/dict) or None when switched off (False/None)."""
    if params is None or params is False:
        return None
    cls = FAMILIES[family]
    params = {} if params is True else dict(params)
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"heuristics.{family}.{unknown[0]}: unknown parameter; known: {known}")
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"heuristics.{family}: {exc}") from exc


class Heuristics(FilterStep):
    name = "heuristics"

    def __init__(
        self,
        order: Sequence[str] = FINEWEB_ORDER,
        gopher_repetition: Any = True,
        gopher_quality: Any = True,
        c4: Any = True,
        fineweb: Any = True,
    ) -> None:
        super().__init__()
        unknown = [f for f in order if f not in FAMILIES]
        if unknown or len(set(order)) != len(order):
            raise ValueError(f"heuristics.order={list(order)}: each of {list(FAMILIES)} at most once")
        settings = {
            "gopher_repetition": gopher_repetition,
            "gopher_quality": gopher_quality,
            "c4": c4,
            "fineweb": fineweb,
        }
        self.filters = [f for f in (build_family(name, settings[name]) for name in order) if f is not None]
        self.bind(self.context)

    def bind(self, context: TaskContext) -> "Heuristics":
        self.context = context
        for family in self.filters:
            family.bind(context)
        return self

    def enabled(self) -> bool:
        return bool(self.filters)

    def rule(self, reason: str) -> str:
        """The families' verdicts already name their rule `<family>:<rule>`."""
        return reason

    def filter(self, doc: Document) -> Verdict:
        """The first family's drop, its rule named `<family>:<rule>`; True when every family keeps `doc`.

        Every family decides on datatrove's view of the text: C4's kept lines, stripped, for the families after
        it. What is written is C4's `rewrite` choice (by default the document as it came)."""
        view = Document(doc.id, doc.text, doc.metadata)
        for family in self.filters:
            if isinstance(family, C4):
                verdict, view.text, written = family.screen(view.text)
            else:
                verdict = family.filter(view)
            if verdict is not True:
                excluded = family.exclusion(verdict)
                if excluded is not None:
                    rule, value, threshold, details = excluded
                    return False, rule, {"value": value, "threshold": threshold, **details}
            elif isinstance(family, C4):
                doc.text = written
        doc.metadata = view.metadata  # what a family annotated
        return True

    def check(self, doc: Document) -> tuple[str, Optional[str]]:
        """(the text written, the first rule the document fails or None), recording nothing."""
        doc = Document(doc.id, doc.text, doc.metadata)
        verdict = self.filter(doc)
        return doc.text, None if verdict is True else verdict[1]
