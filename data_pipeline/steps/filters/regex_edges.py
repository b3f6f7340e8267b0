"""Faster equivalents of a long regex alternation anchored at one end (spaCy's prefix and suffix rules: ~100
alternatives each) and a cheaper scan for an unanchored one (its infix rules: only the positions whose character
can start a match are tried).

`re` tries every alternative at every position: ~10 us a word for spaCy's suffix rules. But a suffix can only end
in a few characters, and a prefix start with a few: reading each alternative's parse tree (`re._parser`) gives
the characters its match can start or end with, and the alternatives that can end in a word's last character
are a handful. Each such subset is compiled once, on first use, keeping the alternatives' order, so it finds
the same match the whole alternation finds. Where the parse tree holds something this module does not read, the
alternative counts as able to start or end with anything, which only costs speed.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Optional

try:  # the parser moved in Python 3.11; both expose the same tree
    from re import _constants as _c
    from re import _parser as _p
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

CharTest = Callable[[str], bool]
_CATEGORIES = {
    _c.CATEGORY_DIGIT: r"\d",
    _c.CATEGORY_NOT_DIGIT: r"\D",
    _c.CATEGORY_SPACE: r"\s",
    _c.CATEGORY_NOT_SPACE: r"\S",
    _c.CATEGORY_WORD: r"\w",
    _c.CATEGORY_NOT_WORD: r"\W",
}
_ZERO_WIDTH = {_c.AT, _c.ASSERT, _c.ASSERT_NOT}
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT} | ({_c.POSSESSIVE_REPEAT} if hasattr(_c, "POSSESSIVE_REPEAT") else set())


@lru_cache(maxsize=4096)
def _parsed(pattern: str):
    """`re`'s parse tree of `pattern`, parsed once per process: the tokenizer reads each rule's tree several times
    (edge characters, the ASCII rewrite, the untouchable alphabets). Read-only."""
    return _p.parse(pattern)


def _char(code: int) -> str:
    return f"\\U{code:08x}"


def top_level_alternatives(pattern: str) -> list[str]:
    """`pattern` cut at its top-level `|` (not inside a group or a character class)."""
    out, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            i += 1 if pattern[i + 1 : i + 2] == "^" else 0
            i += 1 if pattern[i + 1 : i + 2] == "]" else 0
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def _class(items) -> Optional[str]:
    """The one-character regex of a parsed character class, or None when it holds something not read here."""
    negate, parts = "", []
    for op, av in items:
        if op == _c.NEGATE:
            negate = "^"
        elif op == _c.LITERAL:
            parts.append(_char(av))
        elif op == _c.RANGE:
            parts.append(f"{_char(av[0])}-{_char(av[1])}")
        elif op == _c.CATEGORY and av in _CATEGORIES:
            parts.append(_CATEGORIES[av])
        else:
            return None
    return f"[{negate}{''.join(parts)}]"


def _edge(items: list, last: bool) -> tuple[Optional[list[str]], bool]:
    """(one-character regexes for the first/last character a match of `items` can have, or None for any; whether
    the match can be empty)."""
    found: list[str] = []
    for op, av in reversed(items) if last else items:
        if op in _ZERO_WIDTH:
            continue
        if op == _c.LITERAL:
            return found + [_char(av)], False
        if op == _c.NOT_LITERAL:
            return found + [f"[^{_char(av)}]"], False
        if op == _c.IN:
            one = _class(av)
            return (None if one is None else found + [one]), False
        if op in _REPEATS:
            inner, empty = _edge(list(av[2]), last)
            if inner is None:
                return None, False
            found += inner
            if av[0] > 0 and not empty:
                return found, False
            continue
        if op == _c.SUBPATTERN:
            if av[1] & (re.IGNORECASE | re.VERBOSE | re.DOTALL | re.MULTILINE):
                return None, False
            inner, empty = _edge(list(av[3]), last)
            if inner is None:
                return None, False
            found += inner
            if not empty:
                return found, False
            continue
        if op == _c.BRANCH:
            empty_any = False
            for branch in av[1]:
                inner, empty = _edge(list(branch), last)
                if inner is None:
                    return None, False
                found += inner
                empty_any = empty_any or empty
            if not empty_any:
                return found, False
            continue
        return None, False  # ANY, group references, conditionals...: anything
    return found, True


def edge_chars(alternative: str, last: bool) -> Optional[str]:
    """A one-character regex for the characters a match of `alternative` can start (last=False) or end (last=True)
    with; None when that can be any character (or the parse tree holds something not read here)."""
    try:
        found, empty = _edge(list(_parsed(alternative)), last)
    except Exception:  # noqa: BLE001 - an unreadable tree only means no speed-up
        return None
    if found is None or empty:
        return None
    return one_class(found)


def one_class(chars: list[str]) -> str:
    """One-character regexes (single characters, classes) as one class where none is negated: `re` tests one
    class in a single step, where an alternation of classes is tried class by class."""
    if not chars:
        return "(?!)"
    if any(c.startswith("[^") or not c.startswith(("[", "\\U")) for c in chars):
        return "(?:" + "|".join(chars) + ")"
    return "[" + "".join(c[1:-1] if c.startswith("[") else c for c in chars) + "]"


def edge_test(alternative: str, last: bool) -> CharTest:
    """`edge_chars` as a test of one character."""
    chars = edge_chars(alternative, last)
    if chars is None:
        return lambda char: True
    match = re.compile(chars).match
    return lambda char: match(char) is not None


class _ByChar(dict):
    """A dictionary that fills a missing key from `make(key)` (one C-level look-up once filled)."""

    def __init__(self, make: Callable) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key):
        value = self[key] = self._make(key)
        return value


class AnchoredAlternation:
    """`re.compile(pattern).search` for an alternation whose every alternative is anchored at the start (`^...`)
    or the end (`...$`): the same match, from only the alternatives that can begin or end with the text's first or
    last character."""

    def __init__(self, pattern: str, at_end: bool) -> None:
        self.pattern = pattern
        self.at_end = at_end
        self.alternatives = top_level_alternatives(pattern)
        anchor = "$" if at_end else "^"
        ok = all(a.endswith(anchor) if at_end else a.startswith(anchor) for a in self.alternatives)
        ok = ok and "|".join(self.alternatives) == pattern
        self._whole = re.compile(pattern).search
        self._tests: Optional[list[CharTest]] = [edge_test(a, at_end) for a in self.alternatives] if ok else None
        # The search for text with this first (last, at_end) character, None where no alternative can match; each
        # compiled on first use. None when the alternatives could not be read (then only `search` serves).
        self.by_char: Optional[_ByChar] = _ByChar(self._for_char) if ok else None

    def _for_char(self, char: str) -> Optional[Callable]:
        assert self._tests is not None
        chosen = [a for a, test in zip(self.alternatives, self._tests) if test(char)]
        return re.compile("|".join(chosen)).search if chosen else None

    def can_match(self, char: str) -> bool:
        """Whether some alternative can begin (or end, at_end) with `char`: False says search finds nothing."""
        return self.by_char is None or self.by_char[char] is not None

    def search(self, text: str):
        if not text or self.by_char is None:
            return self._whole(text)
        found = self.by_char[text[-1] if self.at_end else text[0]]
        return None if found is None else found(text)


class InfixFinder:
    """`[(m.start(), m.end()) for m in re.compile(pattern).finditer(text)]`, trying only the positions whose
    character can start a match (found by one character-class search, at C speed), and there only the
    alternatives that can start with it (in their order, so the same alternative wins). `re` lookbehinds see the
    text before the position a match is tried at."""

    def __init__(self, pattern: str) -> None:
        self.alternatives = top_level_alternatives(pattern)
        starts = [edge_chars(a, last=False) for a in self.alternatives]
        self._whole = re.compile(pattern).finditer
        self._open = None in starts or "|".join(self.alternatives) != pattern
        self._tests = [] if self._open else [re.compile(one).match for one in starts]
        self._candidate = None if self._open else re.compile(one_class(starts)).search
        self._by_char: dict[str, Optional[Callable]] = {}

    def _for_char(self, char: str) -> Optional[Callable]:
        chosen = [a for a, test in zip(self.alternatives, self._tests) if test(char)]
        found = re.compile("|".join(chosen)).match if chosen else None
        self._by_char[char] = found
        return found

    def may_match(self, text: str) -> bool:
        """False when no character of `text` can start a match (one C-level scan)."""
        return self._open or self._candidate(text) is not None

    def spans(self, text: str) -> list[tuple[int, int]]:
        if self._open:
            return [m.span() for m in self._whole(text)]
        candidate = self._candidate(text)
        if candidate is None:
            return []
        by_char = self._by_char
        out = []
        while candidate is not None:
            index = candidate.start()
            char = text[index]
            match = by_char[char] if char in by_char else self._for_char(char)
            found = None if match is None else match(text, index)
            if found is not None:
                out.append(found.span())
                index = found.end() - 1 if found.end() > index else index
            candidate = self._candidate(text, index + 1)
        return out


def _needs_outside(items, alphabet: frozenset, members: Callable[[list], Optional[frozenset]]) -> bool:
    """Whether every match of the parsed `items` holds a character outside `alphabet` (among the characters it
    matches or the ones a positive lookaround reads). False whenever that is not certain: only a True is relied on.
    `members(class_items)` is the subset of `alphabet` a character class matches, or None when unreadable."""
    for op, av in items:
        if op == _c.LITERAL:
            if chr(av) not in alphabet:
                return True
        elif op == _c.NOT_LITERAL:
            if alphabet <= {chr(av)}:
                return True
        elif op == _c.IN:
            inside = members(av)
            if inside is not None and not inside:
                return True
        elif op in _REPEATS:
            if av[0] > 0 and _needs_outside(list(av[2]), alphabet, members):
                return True
        elif op == _c.SUBPATTERN:
            if not av[1] & re.IGNORECASE and _needs_outside(list(av[3]), alphabet, members):
                return True
        elif op == _c.BRANCH:
            if all(_needs_outside(list(branch), alphabet, members) for branch in av[1]):
                return True
        elif op == _c.ASSERT:  # a positive lookahead/lookbehind reads characters of the same string
            if _needs_outside(list(av[1]), alphabet, members):
                return True
        # AT, ASSERT_NOT, ANY, group references...: nothing certain
    return False


def class_members(items, chars: frozenset) -> Optional[frozenset]:
    """The characters of `chars` a parsed character class matches (read from its items, not compiled: spaCy's
    classes hold hundreds of ranges), or None when it holds something not read here."""
    negate, found = False, set()
    for op, av in items:
        if op == _c.NEGATE:
            negate = True
        elif op == _c.LITERAL:
            found.update(c for c in chars if ord(c) == av)
        elif op == _c.RANGE:
            found.update(c for c in chars if av[0] <= ord(c) <= av[1])
        elif op == _c.CATEGORY and av in _CATEGORIES:
            match = re.compile(_CATEGORIES[av]).match
            found.update(c for c in chars if match(c))
        else:
            return None
    return frozenset(chars - found if negate else found)


def untouchable_alphabets(patterns: list[str], seeds: list[str], candidates: str) -> list[frozenset]:
    """For each seed, its characters plus as many of `candidates` (tried in order) as keep this true: no pattern can
    match anywhere in a string made only of these characters, proven from each pattern's parse tree (every match of
    every alternative needs some character outside the set). Empty for a seed that alone cannot be proven."""
    trees = []
    for pattern in patterns:
        alternatives = top_level_alternatives(pattern)
        if "|".join(alternatives) != pattern:
            alternatives = [pattern]
        for alternative in alternatives:
            tree = _parsed(alternative)
            if tree.state.flags & re.IGNORECASE:
                return [frozenset() for _ in seeds]
            trees.append(list(tree))
    universe = frozenset("".join(seeds)) | frozenset(candidates)
    class_cache: dict[int, Optional[frozenset]] = {}  # by the id of a class's items, alive in the cached trees

    def matched_by(class_items) -> Optional[frozenset]:
        key = id(class_items)
        if key not in class_cache:
            class_cache[key] = class_members(class_items, universe)
        return class_cache[key]

    def proven(alphabet: frozenset) -> bool:
        def members(class_items) -> Optional[frozenset]:
            found = matched_by(class_items)
            return None if found is None else found & alphabet

        return all(_needs_outside(tree, alphabet, members) for tree in trees)

    out = []
    for seed in seeds:
        alphabet = frozenset(seed)
        if not proven(alphabet):
            out.append(frozenset())
            continue
        for char in candidates:
            if char not in alphabet and proven(alphabet | {char}):
                alphabet |= {char}
        out.append(alphabet)
    return out


_ASCII = "".join(map(chr, range(128)))
_ASCII_SET = frozenset(_ASCII)
_AT_CODES = {
    _c.AT_BEGINNING: "^",
    _c.AT_END: "$",
    _c.AT_BEGINNING_STRING: r"\A",
    _c.AT_END_STRING: r"\Z",
    _c.AT_BOUNDARY: r"\b",
    _c.AT_NON_BOUNDARY: r"\B",
}


class _Unreadable(Exception):
    """The parse tree holds something `_ascii_regex` does not rewrite."""


def _ascii_class(chars: str) -> Optional[str]:
    return None if not chars else "[" + "".join(f"\\x{ord(c):02x}" for c in chars) + "]"


def _ascii_regex(items) -> Optional[str]:
    """The parsed `items` rewritten to match exactly the same ASCII strings at the same places, every character
    class cut to its ASCII members (`re` tests a small class in one step, a class of hundreds of Unicode ranges
    range by range); None when no ASCII string can match. Raises `_Unreadable` for what it does not rewrite."""
    out = []
    for op, av in items:
        if op == _c.LITERAL:
            if av >= 128:
                return None
            out.append(f"\\x{av:02x}")
        elif op == _c.NOT_LITERAL:
            out.append(_ascii_class(_ASCII.replace(chr(av), "")) if av < 128 else _ascii_class(_ASCII))
        elif op == _c.IN:
            members = class_members(av, _ASCII_SET)
            if members is None:
                raise _Unreadable(op)
            one = _ascii_class("".join(sorted(members)))
            if one is None:
                return None
            out.append(one)
        elif op in _REPEATS:
            low, high, sub = av
            inner = _ascii_regex(list(sub))
            if inner is None:
                if low > 0:
                    return None
                continue
            bound = f"{{{low},{'' if high == _c.MAXREPEAT else high}}}"
            lazy = "?" if op == _c.MIN_REPEAT else "+" if op not in (_c.MAX_REPEAT, _c.MIN_REPEAT) else ""
            out.append(f"(?:{inner}){bound}{lazy}")
        elif op == _c.SUBPATTERN:
            if av[1] or av[2]:
                raise _Unreadable(op)
            inner = _ascii_regex(list(av[3]))
            if inner is None:
                return None
            out.append(f"(?:{inner})")
        elif op == _c.BRANCH:
            branches = [b for b in (_ascii_regex(list(branch)) for branch in av[1]) if b is not None]
            if not branches:
                return None
            out.append("(?:" + "|".join(branches) + ")")
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            direction, sub = av
            inner = _ascii_regex(list(sub))
            if inner is None:
                if op == _c.ASSERT:
                    return None
                continue  # a lookaround that cannot match never forbids anything
            out.append(f"(?{'<' if direction < 0 else ''}{'=' if op == _c.ASSERT else '!'}{inner})")
        elif op == _c.AT and av in _AT_CODES:
            out.append(_AT_CODES[av])
        else:
            raise _Unreadable(op)
    return "".join(out)


def ascii_alternation(pattern: str) -> Optional[str]:
    """`pattern` for ASCII text only: each top-level alternative with its classes cut to ASCII, those no ASCII
    string can match left out (order kept, so the same alternative wins). Searched in an ASCII string it finds
    exactly what `pattern` finds. None when the pattern holds something not rewritten here (or flags)."""
    alternatives = top_level_alternatives(pattern)
    if "|".join(alternatives) != pattern:
        return None
    kept = []
    try:
        for alternative in alternatives:
            tree = _parsed(alternative)
            if tree.state.flags & ~(re.UNICODE):
                return None
            regex = _ascii_regex(list(tree))
            if regex is not None:
                kept.append(regex)
        rewritten = "|".join(kept) if kept else "(?!)"
        re.compile(rewritten)
    except (_Unreadable, re.error):
        return None
    return rewritten
