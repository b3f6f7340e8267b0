"""Loom's rule families against datatrove's own filters, in one process, on the same documents: each family alone
(Gopher repetition, Gopher quality, C4 without the terminal-punctuation rule, FineWeb) and the four chained in
FineWeb's order, where each side hands its C4-edited text to its own FineWeb filter. Reports the share of
documents on which keep/drop agrees, and every disagreement with Loom's rule, value and threshold and datatrove's
reason.

    python -m tests.data_pipeline.datatrove_agreement [--limit N]

runs it over `machine_docs.machine_documents()` (datatrove and spaCy must be installed: the `dev` extra).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Optional

from data_pipeline.document import Document
from data_pipeline.steps.filters.c4 import C4
from data_pipeline.steps.filters.fineweb import FineWeb
from data_pipeline.steps.filters.gopher_quality import GopherQuality
from data_pipeline.steps.filters.gopher_repetition import GopherRepetition
from data_pipeline.steps.heuristics import Heuristics

FAMILIES = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def datatrove_filters() -> dict:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    return {
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(filter_no_terminal_punct=False),
        "fineweb": FineWebQualityFilter(),
    }


def loom_filters() -> dict:
    return {
        "gopher_repetition": GopherRepetition(),
        "gopher_quality": GopherQuality(),
        "c4": C4(),
        "fineweb": FineWeb(),
    }


def _theirs(flt, doc_id: str, text: str) -> tuple[Optional[str], str]:
    from datatrove.data import Document as DatatroveDocument

    doc = DatatroveDocument(text=text, id=doc_id)
    try:
        verdict = flt.filter(doc)
    except ZeroDivisionError:  # datatrove divides by the word count: a text with no token
        return "error:ZeroDivisionError", doc.text
    if verdict is True:
        return None, doc.text
    return (verdict[1] if isinstance(verdict, tuple) else "dropped"), doc.text


def _ours(flt, doc_id: str, text: str) -> tuple[Optional[str], str]:
    doc = Document(doc_id, text, {})
    excluded = flt.exclusion(flt.filter(doc))
    if excluded is None:
        return None, doc.text
    rule, value, threshold, _ = excluded
    return f"{rule} value={value} threshold={threshold}", doc.text


@dataclass
class Agreement:
    documents: int = 0
    agree: dict[str, int] = field(default_factory=dict)
    disagreements: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: {"loom": 0.0, "datatrove": 0.0})

    def share(self, family: str) -> float:
        return self.agree.get(family, 0) / max(self.documents, 1)

    def summary(self) -> str:
        lines = [f"{self.documents} documents; keep/drop agreement with datatrove:"]
        for family in (*FAMILIES, "chained"):
            lines.append(f"  {family:18s} {self.share(family):.4f} ({self.agree.get(family, 0)}/{self.documents})")
        lines.append(
            f"filter seconds (sum over the five runs): loom {self.seconds['loom']:.1f}, "
            f"datatrove {self.seconds['datatrove']:.1f}"
        )
        lines.append(f"{len(self.disagreements)} disagreements:")
        lines += [f"  {d}" for d in self.disagreements]
        return "\n".join(lines)


def compare(documents: list[tuple[str, str]]) -> Agreement:
    ours, theirs = loom_filters(), datatrove_filters()
    chain = Heuristics()  # FineWeb's order; C4 hands its stripped view to FineWeb
    result = Agreement(documents=len(documents))
    for family in (*FAMILIES, "chained"):
        result.agree[family] = 0
    for doc_id, text in documents:
        for family in FAMILIES:
            start = time.process_time()
            mine, _ = _ours(ours[family], doc_id, text)
            middle = time.process_time()
            their, _ = _theirs(theirs[family], doc_id, text)
            result.seconds["loom"] += middle - start
            result.seconds["datatrove"] += time.process_time() - middle
            if (mine is None) == (their is None):
                result.agree[family] += 1
            else:
                result.disagreements.append(
                    f"{doc_id} [{family}] loom: {mine or 'kept'} | datatrove: {their or 'kept'}"
                )
        start = time.process_time()
        mine = chain.check(Document(doc_id, text, {}))[1]  # the heuristics step itself, as a pipeline runs it
        result.seconds["loom"] += time.process_time() - start
        their_text, their = text, None
        for family in FAMILIES:
            if their is None:
                start = time.process_time()
                their, their_text = _theirs(theirs[family], doc_id, their_text)
                their = their and f"{family}:{their}"
                result.seconds["datatrove"] += time.process_time() - start
        if (mine is None) == (their is None):
            result.agree["chained"] += 1
        else:
            result.disagreements.append(f"{doc_id} [chained] loom: {mine or 'kept'} | datatrove: {their or 'kept'}")
    return result


def main() -> None:
    from tests.data_pipeline.machine_docs import machine_documents

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only every k-th document, about this many")
    args = parser.parse_args()
    docs = machine_documents()
    if args.limit:
        docs = docs[:: max(1, len(docs) // args.limit)][: args.limit]
    print(compare(docs).summary())


if __name__ == "__main__":
    main()
