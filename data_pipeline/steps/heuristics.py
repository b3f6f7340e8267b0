"""Rule-based quality filters from the literature: Gopher quality and repetition (Rae et al. 2021), C4 line rules
(Raffel et al. 2020) and the FineWeb additions (Penedo et al. 2024), with their published defaults.

Each rule group is a dict of thresholds that the config can override key by key; a group set to `null`/False is
switched off. A document is removed with the first rule it fails, named in the reason (e.g.
`gopher_repetition:dup_5gram_char_frac`). C4's line rules also edit the text (they drop bad lines) before the
page-level checks. Hand-written because the rules are short and their exact definitions matter; datatrove has
them but is not a dependency of this project.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Iterator, Optional

from data_pipeline.document import Document
from data_pipeline.steps.base import Step

GOPHER_QUALITY = {
    "min_words": 50,
    "max_words": 100_000,
    "min_mean_word_length": 3.0,
    "max_mean_word_length": 10.0,
    "max_symbol_word_ratio": 0.1,
    "max_bullet_lines_ratio": 0.9,
    "max_ellipsis_lines_ratio": 0.3,
    "min_alpha_words_ratio": 0.8,
    "min_stop_words": 2,
}
GOPHER_REPETITION = {
    "dup_line_frac": 0.30,
    "dup_para_frac": 0.30,
    "dup_line_char_frac": 0.20,
    "dup_para_char_frac": 0.20,
    "top_ngram_char_frac": {2: 0.20, 3: 0.18, 4: 0.16},
    "dup_ngram_char_frac": {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
}
C4 = {
    "min_words_per_line": 3,
    "max_word_length": 1000,
    "min_sentences": 5,
    "remove_no_terminal_punct_lines": True,
    "remove_javascript_lines": True,
    "remove_policy_lines": True,
    "drop_lorem_ipsum": True,
    "drop_curly_bracket": True,
}
FINEWEB = {
    "min_line_punct_ratio": 0.12,
    "max_short_line_ratio": 0.67,
    "short_line_length": 30,
    "max_dup_line_char_ratio": 0.01,
    "max_newline_word_ratio": 0.3,
}
DEFAULTS = {"gopher_quality": GOPHER_QUALITY, "gopher_repetition": GOPHER_REPETITION, "c4": C4, "fineweb": FINEWEB}

STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019")
BULLETS = ("-", "*", "\u2022", "\u2023", "\u25cf", "\u25e6", "\u2043")
ELLIPSES = ("...", "\u2026")
POLICY_WORDS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(\s|$)")


def _merge(group: str, override: Any) -> Optional[dict]:
    if override is None or override is False:
        return None
    merged = dict(DEFAULTS[group])
    if override is True:
        return merged
    for key, value in dict(override).items():
        if key not in merged:
            raise ValueError(f"heuristics.{group}.{key}: unknown threshold; known: {sorted(merged)}")
        if isinstance(merged[key], dict):
            value = {int(k): float(v) for k, v in dict(value).items()}
        merged[key] = value
    return merged


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    total_chars = sum(len(i) for i in items) or 1
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        seen.add(item)
    return dup_items / max(len(items), 1), dup_chars / total_chars


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def _top_ngram_char_frac(words: list[str], n: int, total_chars: int) -> float:
    ngrams = _ngrams(words, n)
    if not ngrams:
        return 0.0
    top, count = Counter(ngrams).most_common(1)[0]
    return sum(len(w) for w in top) * count / max(total_chars, 1)


def _dup_ngram_char_frac(words: list[str], n: int, total_chars: int) -> float:
    """Fraction of word characters covered by n-grams that occur more than once (each word counted once)."""
    ngrams = _ngrams(words, n)
    counts = Counter(ngrams)
    if len(counts) == len(ngrams):
        return 0.0
    covered = bytearray(len(words))
    ones = b"\x01" * n
    for i, gram in enumerate(ngrams):
        if counts[gram] > 1:
            covered[i : i + n] = ones
    return sum(len(w) for w, c in zip(words, covered) if c) / max(total_chars, 1)


def gopher_quality(text: str, words: list[str], t: dict) -> Optional[str]:
    n = len(words)
    if n < t["min_words"]:
        return "min_words"
    if n > t["max_words"]:
        return "max_words"
    alpha_words = [w for w in words if any(c.isalpha() for c in w)]
    mean_len = sum(len(w) for w in words) / n
    if mean_len < t["min_mean_word_length"]:
        return "min_mean_word_length"
    if mean_len > t["max_mean_word_length"]:
        return "max_mean_word_length"
    symbols = text.count("#") + sum(text.count(e) for e in ELLIPSES)
    if symbols / n > t["max_symbol_word_ratio"]:
        return "max_symbol_word_ratio"
    lines = [line for line in text.split("\n") if line.strip()]
    if lines and sum(line.lstrip().startswith(BULLETS) for line in lines) / len(lines) > t["max_bullet_lines_ratio"]:
        return "max_bullet_lines_ratio"
    if lines and sum(line.rstrip().endswith(ELLIPSES) for line in lines) / len(lines) > t["max_ellipsis_lines_ratio"]:
        return "max_ellipsis_lines_ratio"
    if len(alpha_words) / n < t["min_alpha_words_ratio"]:
        return "min_alpha_words_ratio"
    if len(STOP_WORDS.intersection(w.lower() for w in words)) < t["min_stop_words"]:
        return "min_stop_words"
    return None


def gopher_repetition(text: str, words: list[str], t: dict) -> Optional[str]:
    lines = [line for line in text.split("\n") if line.strip()]
    paragraphs = [p for p in re.split(r"\n{2,}", text) if p.strip()]
    para_frac, para_char_frac = _dup_fraction(paragraphs)
    if para_frac > t["dup_para_frac"]:
        return "dup_para_frac"
    if para_char_frac > t["dup_para_char_frac"]:
        return "dup_para_char_frac"
    line_frac, line_char_frac = _dup_fraction(lines)
    if line_frac > t["dup_line_frac"]:
        return "dup_line_frac"
    if line_char_frac > t["dup_line_char_frac"]:
        return "dup_line_char_frac"
    lowered = _WORD.findall(text.lower())
    total_chars = sum(map(len, lowered))
    for n, limit in t["top_ngram_char_frac"].items():
        if _top_ngram_char_frac(lowered, n, total_chars) > limit:
            return f"top_{n}gram_char_frac"
    for n, limit in t["dup_ngram_char_frac"].items():
        if _dup_ngram_char_frac(lowered, n, total_chars) > limit:
            return f"dup_{n}gram_char_frac"
    return None


def c4_clean(text: str, t: dict) -> tuple[str, Optional[str]]:
    """Drop bad lines (C4 line rules); return the cleaned text and a page-level reason to drop, if any."""
    lowered = text.lower()
    if t["drop_lorem_ipsum"] and "lorem ipsum" in lowered:
        return text, "lorem_ipsum"
    if t["drop_curly_bracket"] and "{" in text:
        return text, "curly_bracket"
    kept = []
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            kept.append("")
            continue
        words = stripped.split()
        if any(len(w) > t["max_word_length"] for w in words):
            continue
        if t["remove_no_terminal_punct_lines"] and not stripped.endswith(TERMINAL_PUNCT):
            continue
        if len(words) < t["min_words_per_line"]:
            continue
        low = stripped.lower()
        if t["remove_javascript_lines"] and "javascript" in low:
            continue
        if t["remove_policy_lines"] and any(p in low for p in POLICY_WORDS):
            continue
        kept.append(stripped)
    cleaned = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    if len(_SENTENCE_END.findall(cleaned)) < t["min_sentences"]:
        return cleaned, "min_sentences"
    return cleaned, None


def fineweb(text: str, words: list[str], t: dict) -> Optional[str]:
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    if not lines:
        return "no_lines"
    if sum(line.endswith(TERMINAL_PUNCT) for line in lines) / len(lines) < t["min_line_punct_ratio"]:
        return "line_punct_ratio"
    if sum(len(line) <= t["short_line_length"] for line in lines) / len(lines) > t["max_short_line_ratio"]:
        return "short_line_ratio"
    _, dup_char_frac = _dup_fraction(lines)
    if dup_char_frac > t["max_dup_line_char_ratio"]:
        return "dup_line_char_ratio"
    if text.count("\n") / max(len(words), 1) > t["max_newline_word_ratio"]:
        return "newline_word_ratio"
    return None


class Heuristics(Step):
    name = "heuristics"

    def __init__(
        self,
        gopher_quality: Any = True,
        gopher_repetition: Any = True,
        c4: Any = True,
        fineweb: Any = True,
    ) -> None:
        super().__init__()
        self.rules = {
            "gopher_quality": _merge("gopher_quality", gopher_quality),
            "gopher_repetition": _merge("gopher_repetition", gopher_repetition),
            "c4": _merge("c4", c4),
            "fineweb": _merge("fineweb", fineweb),
        }

    def check(self, doc: Document) -> tuple[str, Optional[str]]:
        """(possibly cleaned text, reason to remove or None)."""
        text = doc.text
        if self.rules["c4"] is not None:
            text, reason = c4_clean(text, self.rules["c4"])
            if reason:
                return text, f"c4:{reason}"
            if not text:
                return text, "c4:empty_after_line_rules"
        words = text.split()
        for group, fn in (("gopher_quality", gopher_quality), ("gopher_repetition", gopher_repetition), ("fineweb", fineweb)):
            if self.rules[group] is not None:
                reason = fn(text, words, self.rules[group])
                if reason:
                    return text, f"{group}:{reason}"
        return text, None

    def run(self, documents: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in documents:
            text, reason = self.check(doc)
            if reason is not None:
                self.context.exclude(doc, reason)
                continue
            if text != doc.text:
                self.context.count("c4_lines_removed_docs")
            yield Document(doc.id, text, doc.metadata)
