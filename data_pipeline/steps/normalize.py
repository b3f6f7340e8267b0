"""Unicode and whitespace normalisation, so later steps (dedup, heuristics, tokenizer) see one spelling of a text.

Hand-written because it is a few lines of `unicodedata` and `re`; no library bundles exactly these rules.
Emoji and other pictographic symbols (Unicode category So) are kept by default; `symbols: words` spells them
out ("👍🏽" -> "thumbs up medium skin tone", with the `emoji` package's CLDR names; other symbols by
their Unicode name, "★" -> "black star"), `symbols: remove` deletes them.

Indentation is kept by default (`indentation: keep`): a line that starts with whitespace, and every line inside a
fenced block (``` or ~~~), is preformatted text (code, a quoted block, an aligned table), so its leading
whitespace and inner spacing stay byte for byte and only trailing whitespace goes. Other lines have each run of
spaces and tabs made one space. `indentation: strip` is the old behaviour, every line stripped and every run
collapsed: it flattened the 4,626 indented lines of the Python documentation pages of a web run to none.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Optional, Sequence

from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject

# Cc/Cf characters other than newline and tab (zero-width spaces, BOM, escape sequences, NUL...).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = "\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
# Runs that need rewriting only (a single plain space matches nothing): a run starting with another space
# character, or a space followed by more.
_INLINE_SPACE = re.compile(f"[{_SPACES}][ {_SPACES}]*| [ {_SPACES}]+")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")
_SPACE_AROUND_NEWLINE = re.compile(r" \n ?|\n ")  # after inline runs became one space: strips every line
_LEADING_BLANK_LINES = re.compile(f"^(?:[ {_SPACES}]*\n)+")
_FENCE = re.compile(r"^[ \t]*(?:```|~~~)")
# A block of lines starting with whitespace, after the newline before it. Written from that literal newline rather than
# `^` with re.MULTILINE so `re` jumps from newline to newline instead of trying every character (3x faster).
_INDENTED_BLOCK = re.compile(r"\n((?:[^\S\n][^\n]*(?:\n|\Z))+)")
INDENTATION_MODES = ("keep", "strip")

# Lines to drop by pattern: none by default. Template text repeated across documents is boilerplate_dedup's job
# and C4's line rules drop javascript and cookie/terms lines; give patterns for what a source needs beyond that.
DEFAULT_BOILERPLATE: tuple[str, ...] = ()


SYMBOL_MODES = ("keep", "words", "remove")


def map_symbols(text: str, mode: str) -> str:
    """Emoji and other symbols kept, spelled out as words, or removed (see the module docstring)."""
    if mode == "keep" or text.isascii():
        return text
    import emoji
    import regex

    if mode == "words":
        text = emoji.replace_emoji(text, replace=lambda chars, data: f" {data['en'].strip(':').replace('_', ' ')} ")
        return regex.sub(r"\p{So}", lambda m: f" {unicodedata.name(m.group(), 'symbol').lower()} ", text)
    return regex.sub(r"\p{So}", "", emoji.replace_emoji(text, replace=""))


def _may_hold_runs(text: str) -> bool:
    """False when ASCII `text` holds no run `_INLINE_SPACE` rewrites (no tab, no two spaces); True for other text."""
    return not text.isascii() or "  " in text or "\t" in text


def _indented_split(text: str) -> list[str]:
    """`text` cut into [other, indented block, other, ..., other]; joined, the parts are `text` again."""
    parts = _INDENTED_BLOCK.split("\n" + text)
    for index in range(0, len(parts) - 1, 2):
        parts[index] += "\n"  # the newline each block's match consumed belongs to the text before the block
    parts[0] = parts[0][1:]
    return parts


def _collapse_keeping_indentation(text: str) -> str:
    """Trailing whitespace removed; runs of spaces made one space except in preformatted lines (indented, or
    inside a fenced block), which keep theirs. `text` holds no control characters (`normalize_text` removed them),
    so the whitespace a line can end in is exactly the space characters (" " and `_SPACES`), and `str.rstrip` line
    by line (a C-level map) removes what a regex for them would, three times faster."""
    text = "\n".join(map(str.rstrip, text.split("\n")))
    if "```" not in text and "~~~" not in text:
        # The common case: runs collapsed chunk by chunk between blocks of indented lines, which stay as they are
        # (a run never holds a newline), two C-level passes instead of a Python call per line or per run.
        parts = _indented_split(text)
        parts[::2] = [_INLINE_SPACE.sub(" ", part) if _may_hold_runs(part) else part for part in parts[::2]]
        return "".join(parts)
    lines, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            lines.append(line)
        else:
            lines.append(line if fenced or line[:1].isspace() else _INLINE_SPACE.sub(" ", line))
    return "\n".join(lines)


def normalize_text(
    text: str,
    form: str = "NFC",
    boilerplate: Sequence[re.Pattern] = (),
    symbols: str = "keep",
    indentation: str = "keep",
) -> str:
    """One spelling of `text`. `boilerplate` patterns are matched per line (compiled with re.MULTILINE, so `^` is a
    line start); a line one matches is dropped. Whole-text regex passes: ~3x faster than a loop over lines."""
    text = map_symbols(unicodedata.normalize(form, text), symbols)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if indentation == "keep":
        text = _LEADING_BLANK_LINES.sub("", _collapse_keeping_indentation(text)).rstrip()
    else:
        text = _SPACE_AROUND_NEWLINE.sub("\n", _INLINE_SPACE.sub(" ", text)).strip()
    if any(p.search(text) for p in boilerplate):
        text = "\n".join(line for line in text.split("\n") if not (line and any(p.search(line) for p in boilerplate)))
    if "\n\n\n" in text:
        text = _MANY_BLANK_LINES.sub("\n\n", text)
        text = _LEADING_BLANK_LINES.sub("", text).rstrip() if indentation == "keep" else text.strip()
    return text


class Normalize(FilterStep):
    name = "normalize"

    def __init__(
        self,
        form: str = "NFC",
        boilerplate_patterns: Optional[Sequence[str]] = None,
        symbols: str = "keep",
        indentation: str = "keep",
    ) -> None:
        super().__init__()
        if indentation not in INDENTATION_MODES:
            raise ValueError(f"normalize.indentation={indentation!r}: use one of {', '.join(INDENTATION_MODES)}")
        self.indentation = indentation
        if symbols not in SYMBOL_MODES:
            raise ValueError(f"normalize.symbols={symbols!r}: use one of {', '.join(SYMBOL_MODES)}")
        self.symbols = symbols
        if form not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"normalize.form={form!r}: use NFC, NFKC, NFD or NFKD")
        patterns = DEFAULT_BOILERPLATE if boilerplate_patterns is None else boilerplate_patterns
        try:
            self.boilerplate = [re.compile(p, re.MULTILINE) for p in patterns]
        except re.error as exc:
            raise ValueError(f"normalize.boilerplate_patterns: invalid regex ({exc})") from exc
        self.form = form

    def filter(self, doc: Document) -> Verdict:
        """Rewrites the text; drops a document left empty (`normalize:empty`, value its characters, threshold 1)."""
        text = normalize_text(doc.text, self.form, self.boilerplate, self.symbols, self.indentation)
        if not text:
            return reject("empty", 0, 1)
        if text != doc.text:
            self.context.count("changed")
            doc.text = text
        return True
