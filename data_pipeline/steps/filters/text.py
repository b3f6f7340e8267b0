"""Measurements shared by the rule families: words, lines, duplicated items and sentence ends.

Words are whitespace-separated tokens (`str.split`), not a language-specific word tokenizer as in datatrove
(NLTK or spaCy): the rules' thresholds were set on word counts that tokenizers agree on to a few per cent, and
a C-level split is ~50x faster than spaCy. Where the difference shows (punctuation glued to a word adds ~0.15 to
the mean word length), the module that measures says so.
"""

from __future__ import annotations

import re
from functools import lru_cache

_last_text: str = ""
_last_words: list[str] = []


def words_of(text: str) -> list[str]:
    """`text.split()`, remembered for the last text: the families of one chain measure the same string."""
    global _last_text, _last_words
    if text is not _last_text:
        _last_text, _last_words = text, text.split()
    return _last_words


def duplicated(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


@lru_cache(maxsize=1)
def sentence_terminals() -> frozenset[str]:
    """Characters with Unicode's Sentence_Terminal property (. ! ? 。 ‼ ۔ ...), as FineWeb's line rule counts them.

    Taken from the `regex` module's Unicode tables rather than typed in; every such character is below U+20000.
    """
    import regex

    candidates = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x20000)))  # no surrogates
    return frozenset(regex.findall(r"\p{Sentence_Terminal}", candidates))


# A sentence boundary inside a line: terminal punctuation, optional closing quotes/brackets, then space and more
# text. A line holds one sentence more than it has boundaries (NLTK's Punkt, which C4 and datatrove use, also
# knows abbreviations; this does not, so "e.g. this" counts two).
SENTENCE_BOUNDARY = re.compile(r"[.!?\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s+(?=\S)")
