"""Writes the word-tokenizer rule tables the filters count with (`<language>.json` beside this file), read from
spaCy's blank pipeline for that language: the tokenizer's special cases (string -> its tokens), its prefix, suffix,
infix and URL patterns, and the sentencizer's punctuation. datatrove's word tokenizer for English and most
European languages is `spacy.blank(language)` plus the sentencizer; `data_pipeline.steps.filters.words` applies
these tables with spaCy's algorithm without importing spaCy (whose import alone takes ~2 s, pulling in thinc and
torch). The tables are data from spaCy (MIT licence); rerun this after a spaCy upgrade:

    python -m data_pipeline.steps.filters.word_rules.export en [de fr ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def export(language: str) -> dict:
    import spacy
    from spacy.attrs import ORTH
    from spacy.pipeline import Sentencizer

    tokenizer = spacy.blank(language).tokenizer

    def pattern(bound) -> str | None:
        if bound is None:
            return None
        compiled = bound.__self__
        if compiled.flags & ~32:  # re.UNICODE is implied for str patterns; anything else would need carrying over
            raise ValueError(f"{language}: pattern flags {compiled.flags} are not carried over")
        return compiled.pattern

    return {
        "spacy_version": spacy.__version__,
        "language": language,
        "faster_heuristics": bool(tokenizer.faster_heuristics),
        "special_cases": {
            text: [piece.get(ORTH, piece.get("ORTH")) for piece in pieces]
            for text, pieces in sorted(tokenizer.rules.items())
        },
        "prefix": pattern(tokenizer.prefix_search),
        "suffix": pattern(tokenizer.suffix_search),
        "infix": pattern(tokenizer.infix_finditer),
        "url": pattern(tokenizer.url_match),
        "token_match": pattern(tokenizer.token_match),
        "sentence_punctuation": sorted(Sentencizer.default_punct_chars),
    }


def main(languages: list[str]) -> None:
    for language in languages or ["en"]:
        path = Path(__file__).with_name(f"{language}.json")
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(export(language), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
