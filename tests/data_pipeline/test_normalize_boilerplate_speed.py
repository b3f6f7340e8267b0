"""The faster normalize and boilerplate code does what the regex-per-line code did: checked on every code point
where the argument rests on a Unicode property, and against the earlier implementation on random text."""

from __future__ import annotations

import random
import re

from data_pipeline.steps.boilerplate_dedup import BoilerplateDedup
from data_pipeline.steps.normalize import _CONTROL, _INLINE_SPACE, _SPACES, _collapse_keeping_indentation

ALL_CHARS = [chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000]


def _collapse_before(text: str) -> str:
    """The implementation this one replaced: a regex for trailing space, one `sub` per unindented line."""
    text = re.sub(f"[ {_SPACES}]+$", "", text, flags=re.MULTILINE)
    if "```" not in text and "~~~" not in text:
        return re.sub(r"^\S[^\n]*", lambda m: _INLINE_SPACE.sub(" ", m.group()), text, flags=re.MULTILINE)
    lines, fenced = [], False
    for line in text.split("\n"):
        if re.match(r"^[ \t]*(?:```|~~~)", line):
            fenced = not fenced
            lines.append(line)
        else:
            lines.append(line if fenced or line[:1].isspace() else _INLINE_SPACE.sub(" ", line))
    return "\n".join(lines)


def test_whitespace_left_after_control_removal_is_newline_or_the_space_class():
    space = re.compile(f"[ {_SPACES}]")
    left = [c for c in ALL_CHARS if c.isspace() and not _CONTROL.match(c) and c not in "\r\n"]
    assert left and all(space.match(c) for c in left)


def test_collapse_matches_the_earlier_implementation():
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\t", "\n", "\n\n", "\u00a0", "\u3000", "\u2003", "é", "```", "x.", "   "]
    texts = ["", " ", "\n", "a  b\n  c  d\n\te\tf  \n", "```\n  a  b\n```\nc  d  "]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(6000)]
    for text in texts:
        assert _collapse_keeping_indentation(text) == _collapse_before(text), repr(text)


def test_case_folding_maps_no_character_to_or_from_whitespace():
    for char in ALL_CHARS:
        folded = char.casefold()
        if char.isspace():
            assert folded == char, hex(ord(char))
        else:
            assert not any(c.isspace() for c in folded), hex(ord(char))


def _hashes_before(step: BoilerplateDedup, text: str) -> list[int]:
    import hashlib

    out = []
    for span in step.spans(text):
        key = " ".join(span.casefold().split()).translate(str.maketrans("123456789", "000000000"))
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        out.append(int.from_bytes(digest, "little") if len(key) >= step.min_chars else 0)
    return out


def test_span_hashes_match_the_earlier_implementation():
    rng = random.Random(1)
    alphabet = ["Copyright", " 2019", " ß", "İ", " ﬁle", "\n", "\n\n", " \t\n \n", "x", "Σ", "１２", "٣", " 7 "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    for unit in ("paragraph", "line"):
        step = BoilerplateDedup(unit=unit, min_chars=8)
        for text in texts:
            assert step.hashes(text) == _hashes_before(step, text), repr(text)
