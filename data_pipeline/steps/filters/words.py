"""Words and sentences counted as datatrove counts them, at a fraction of its cost.

datatrove's filters count words with its word tokenizer, for English (and most European languages) spaCy's rule
tokenizer (`spacy.blank(language)`): text is cut at whitespace, then each piece loses prefixes (opening brackets,
quotes, currency signs...) and suffixes (closing punctuation, "'s", units after numbers...) one at a time, unless
the piece is a special case ("don't" -> "do" "n't", "e.g.", ":)") or a URL; what is left is cut at infixes
(hyphens between letters, "..." , "/" or ":" between letters...). Sentences are spaCy's sentencizer's: a new
sentence starts at the first token after a sentence-final character (".", "!", "?", and the other scripts' marks)
that is not itself punctuation.

This module applies the same algorithm to the same rule tables (`word_rules/<language>.json`, exported from
spaCy by `word_rules/export.py`) without importing spaCy, whose import alone takes ~2 s. A whitespace-separated
piece is tokenized once and remembered: prose repeats its pieces, so a document costs little more than
`str.split` and a dictionary look-up per piece. Tokens are returned as datatrove keeps them: whitespace tokens
dropped.

The first sight of a piece is the cost on text with many distinct pieces (change logs: addresses, versions, paths).
Two fast paths, both exact: text made only of an "untouchable" alphabet (ASCII letters or digits and the few
characters no rule can use with them, proven from the rule tables by `regex_edges.untouchable_alphabets`) is one
token without a search, whole or once its affixes are off; and ASCII pieces (nearly all) are searched with the
rules cut to ASCII (`regex_edges.ascii_alternation`), whose small character classes `re` tests in one step.
tests/data_pipeline/test_word_fast_paths.py checks both against spaCy. A third: the affix loop's only state is
the text left, so once that is a remembered piece, its tokens complete the answer ("(word," after "word";
tests/data_pipeline/test_word_ids.py).

The filters read tokens through `token_ids` (`text.Words`): ids into a table of the distinct tokens with their
lengths and hashes, gathered with numpy, so a document's tokens are never listed as strings.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from data_pipeline.steps.filters.regex_edges import (
    AnchoredAlternation,
    InfixFinder,
    ascii_alternation,
    untouchable_alphabets,
)

RULES_DIR = Path(__file__).with_name("word_rules")
_WHITESPACE_RUN = re.compile(r"\s+")
# Remembered pieces before the memos are cleared, between documents: a bound on memory. Each piece is remembered
# twice since the ids were added (its tokens, and its ids), so the limit was halved from 2,000,000 to keep the bound.
_CACHE_LIMIT = 1_000_000
# Untouchable alphabets are grown from these seeds with these candidates (ASCII: what most pieces are made of).
_ALPHABET_SEEDS = (string.ascii_letters, string.digits)
_ALPHABET_CANDIDATES = "".join(map(chr, range(0x21, 0x7F)))
_AFFIXES = ("prefix", "suffix", "infix")


def _compiled(pattern: Optional[str], method: str) -> Optional[Callable]:
    return None if pattern is None else getattr(re.compile(pattern), method)


def is_punct(token: str) -> bool:
    """spaCy's `Token.is_punct`: every character in a Unicode punctuation category."""
    return all(unicodedata.category(char).startswith("P") for char in token)


class _AffixRules:
    """A language's prefix, suffix and infix patterns, compiled for the searches the tokenizer makes."""

    def __init__(self, prefix: Optional[str], suffix: Optional[str], infix: Optional[str]) -> None:
        self.prefix = AnchoredAlternation(prefix, at_end=False) if prefix else None
        self.suffix = AnchoredAlternation(suffix, at_end=True) if suffix else None
        self.infix = InfixFinder(infix) if infix else None
        self.prefix_search = self.prefix.search if self.prefix else None
        self.suffix_search = self.suffix.search if self.suffix else None
        # The per-character searches, read in the affix loop without a call of `search` (None: call it).
        self.prefix_by_char = self.prefix.by_char if self.prefix else None
        self.suffix_by_char = self.suffix.by_char if self.suffix else None
        self.infix_spans = self.infix.spans if self.infix else None


class Column:
    """A numpy column filled in batches (its capacity doubled as it grows): `data[:size]` holds the values. Read
    `data` at each use: growing replaces it."""

    def __init__(self, dtype) -> None:
        self.data = np.empty(1024, dtype=dtype)
        self.size = 0

    def extend(self, values) -> None:
        end = self.size + len(values)
        if end > len(self.data):
            grown = np.empty(max(end, 2 * len(self.data)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : end] = values
        self.size = end


class WordTokenizer:
    """spaCy's rule tokenizer and sentencizer for one language, from the exported tables.

    Besides the tokens as strings (`words`, `piece_tokens`), it numbers them for the filters, which read only
    per-token figures (length, hash, character classes) in token order: `token_ids(pieces)` maps a text's
    whitespace pieces to the ids of their tokens with one dictionary look-up per piece and numpy gathers, where a
    list of strings costs a step per token, and every figure of a token is computed once, at its first sight."""

    def __init__(self, language: str = "en") -> None:
        path = RULES_DIR / f"{language}.json"
        if not path.is_file():
            known = sorted(p.stem for p in RULES_DIR.glob("*.json"))
            raise ValueError(
                f"word tokenizer: no rules for language {language!r} ({path} missing); known: {known}. "
                f"Export them with `python -m data_pipeline.steps.filters.word_rules.export {language}` (needs spaCy)"
            )
        rules = json.loads(path.read_text(encoding="utf-8"))
        self.language = language
        self.specials: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in rules["special_cases"].items()}
        self._full = _AffixRules(*(rules[kind] for kind in _AFFIXES))
        # The same rules with every character class cut to ASCII, for ASCII pieces (nearly all): `re` tests a small
        # class in one step, a class of hundreds of Unicode ranges range by range. Where a rule is not rewritten
        # (`ascii_alternation` says None), the full rules serve every piece.
        ascii_patterns = [ascii_alternation(rules[kind]) if rules[kind] else None for kind in _AFFIXES]
        rewritten = all((pattern is not None) == bool(rules[kind]) for pattern, kind in zip(ascii_patterns, _AFFIXES))
        self._ascii = _AffixRules(*ascii_patterns) if rewritten else self._full
        prefix, suffix, infix = self._full.prefix, self._full.suffix, self._full.infix
        self._may_start = prefix.can_match if prefix else lambda char: False
        self._may_end = suffix.can_match if suffix else lambda char: False
        self._may_cut = infix.may_match if infix else lambda text: False
        self._url = _compiled(rules["url"], "match")
        self._token_match = _compiled(rules["token_match"], "match")
        self.sentence_punctuation = frozenset(rules["sentence_punctuation"])
        self._untouched = self._untouched_test([rules[kind] for kind in _AFFIXES if rules[kind]])
        self._cache: dict[str, tuple[str, ...]] = dict(self.specials)
        self._merged: set[str] = set()  # remembered pieces whose tokens special cases merged (`_remember`)
        # Special cases the affix rules would cut ("a:)" -> "a" ":" ")"): spaCy merges their pieces back after the
        # affix pass (its "faster heuristics"); keyed by the pieces the special case is cut into without them.
        self._merges: dict[tuple[str, ...], str] = {}
        for special in self.specials:
            if not rules["faster_heuristics"] or " " in special or self._affix_cut(special):
                pieces = self._affix_tokens(special, use_specials=False)
                if len(pieces) > 1:
                    self._merges[pieces] = special
        self._merge_starts = frozenset(pieces[0] for pieces in self._merges)
        self._merge_pairs = frozenset(pieces[:2] for pieces in self._merges)
        self._merge_lengths = {
            start: tuple(sorted({len(pieces) for pieces in self._merges if pieces[0] == start}, reverse=True))
            for start in self._merge_starts
        }
        joined_wrong = [special for special, tokens in self.specials.items() if "".join(tokens) != special]
        if joined_wrong:  # `token_ids` callers join the pieces for the tokens' characters
            raise ValueError(f"word tokenizer: special cases {joined_wrong[:3]} of {path} do not join to their text")
        self._forget_ids()

    def _forget_ids(self) -> None:
        """Empty the numbering (`generation` counts the restarts: ids of an earlier generation mean nothing)."""
        self.generation = getattr(self, "generation", -1) + 1
        self._piece_ids: dict[str, int] = {}
        self._piece_starts = Column(np.int64)  # where each piece's token ids start in `_piece_tokens`
        self._piece_counts = Column(np.int64)  # how many tokens each piece has
        self._piece_tokens = Column(np.int64)  # the token ids of every piece, one piece after the other
        self._token_ids: dict[str, int] = {}
        self.token_texts: list[str] = []  # id -> token
        self.token_lengths = Column(np.int64)  # id -> len(token)
        self.token_hashes = Column(np.int64)  # id -> hash(token)
        self.per_token: dict[str, object] = {}  # other tables by id that callers keep (emptied with the numbering)

    @staticmethod
    def _untouched_test(patterns: list[str]) -> Callable[[str], object]:
        """A test (one C-level `fullmatch`) for text no prefix, suffix or infix rule can cut: text made only of the
        characters of one untouchable alphabet (`regex_edges.untouchable_alphabets`, proven from the rule tables:
        plain words, plain numbers). Such text is one token unless it is a special case."""
        alphabets = untouchable_alphabets(patterns, list(_ALPHABET_SEEDS), _ALPHABET_CANDIDATES)
        runs = [f"[{re.escape(''.join(sorted(a)))}]+" for a in alphabets if a]
        return re.compile("|".join(runs)).fullmatch if runs else (lambda text: None)

    def _affix_cut(self, text: str) -> bool:
        rules = self._full
        return bool(
            (rules.prefix_search and rules.prefix_search(text))
            or (rules.suffix_search and rules.suffix_search(text))
            or (rules.infix_spans and rules.infix_spans(text))
        )

    def _affix_tokens(self, text: str, use_specials: bool = True, touchable: bool = False) -> tuple[str, ...]:
        """spaCy's tokenization of one whitespace-free piece: prefixes and suffixes off, then infix cuts.
        `touchable`: the caller found the piece not untouchable (`_untouched`), so that is not asked again.

        spaCy's affix loop carries nothing from one pass to the next but the text left, so once the text left is
        a remembered piece (`piece_tokens`) whose tokens no special case merged, the answer is the affixes taken
        off around that piece's tokens: "(word," after "word" costs one prefix and one suffix search."""
        specials = self.specials if use_specials else {}
        memo = self._cache if use_specials else {}
        merged = self._merged
        token_match, untouched = self._token_match, self._untouched
        rules = self._ascii if text.isascii() else self._full  # the piece's substrings are ASCII as it is
        prefix_search, suffix_search = rules.prefix_search, rules.suffix_search
        prefix_by_char, suffix_by_char = rules.prefix_by_char, rules.suffix_by_char
        prefixes: list[str] = []
        suffixes: list[str] = []
        last_size = -1
        stopped_untouched = False
        while text and len(text) != last_size:
            # Special cases are remembered pieces: a special case is met here (with use_specials).
            if text in memo and text not in merged:
                return (*prefixes, *memo[text], *reversed(suffixes))
            if token_match and token_match(text):
                break
            if not touchable and untouched(text):
                stopped_untouched = True
                break  # no prefix or suffix matches: this pass would leave the text as it is
            touchable = False  # the text changes: ask again
            last_size = len(text)
            if prefix_by_char is not None:
                found = prefix_by_char[text[0]]
                match = found(text) if found is not None else None
            else:
                match = prefix_search(text) if prefix_search else None
            pre_len = match.end() - match.start() if match else 0
            if pre_len:
                rest = text[pre_len:]
                if rest and rest in specials:
                    prefixes.append(text[:pre_len])
                    text = rest
                    break
            if suffix_by_char is not None and pre_len < len(text):
                found = suffix_by_char[text[-1]]
                match = found(text[pre_len:]) if found is not None else None
            else:
                match = suffix_search(text[pre_len:]) if suffix_search else None
            suf_len = match.end() - match.start() if match else 0
            if suf_len:
                rest = text[:-suf_len]
                if rest and rest in specials:
                    suffixes.append(text[-suf_len:])
                    text = rest
                    break
            if pre_len and suf_len and pre_len + suf_len <= len(text):
                prefixes.append(text[:pre_len])
                suffixes.append(text[-suf_len:])
                text = text[pre_len:-suf_len]
            elif pre_len:
                prefixes.append(text[:pre_len])
                text = text[pre_len:]
            elif suf_len:
                suffixes.append(text[-suf_len:])
                text = text[:-suf_len]
        if not text:
            core: tuple[str, ...] = ()
        elif stopped_untouched:
            core = (text,)  # no infix can match either (and a special case was met above)
        elif text in specials:
            core = specials[text]
        else:
            core = self._core_tokens(text, rules)
        return (*prefixes, *core, *reversed(suffixes))

    def _core_tokens(self, text: str, rules: _AffixRules) -> tuple[str, ...]:
        """The tokens of text no prefix or suffix comes off, not a special case, found not untouchable (or
        matched by the token pattern, which keeps it whole): cut at its infixes."""
        token_match = self._token_match
        # No infix: one token whatever the URL and token patterns say (so they are not asked).
        spans = rules.infix_spans(text) if rules.infix_spans else ()
        if not spans or (token_match and token_match(text)) or (self._url and self._url(text)):
            return (text,)
        tokens = []
        start = 0
        for infix_start, infix_end in spans:
            if infix_start == 0:
                continue  # an infix at the very start is no cut (spaCy skips it)
            if infix_start != start:
                tokens.append(text[start:infix_start])
            if infix_start != infix_end:
                tokens.append(text[infix_start:infix_end])
            start = infix_end
        if text[start:]:
            tokens.append(text[start:])
        return tuple(tokens)

    def _remember(self, piece: str, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """Remember the piece's tokens, once special cases the affix rules cut are merged back; a piece that merge
        changed is noted in `_merged` (its remembered tokens are not the affix loop's). A merge starts before the
        last token, with the second piece of some merge after it."""
        if (
            len(tokens) > 1
            and not self._merge_starts.isdisjoint(tokens[:-1])
            and not self._merge_pairs.isdisjoint(zip(tokens, tokens[1:]))
        ):
            merged = self._merge_specials(tokens)
            if merged != tokens:
                self._merged.add(piece)
                tokens = merged
        self._cache[piece] = tokens
        return tokens

    def _merge_specials(self, tokens: tuple[str, ...]) -> tuple[str, ...]:
        """Pieces of a special case cut by the affix rules, merged back: longest first, then the later one."""
        spans = []
        merges, merge_lengths, size = self._merges, self._merge_lengths, len(tokens)
        for start, token in enumerate(tokens):
            for length in merge_lengths.get(token, ()):  # the lengths of the merges starting with it, longest first
                if start + length <= size:
                    special = merges.get(tokens[start : start + length])
                    if special is not None:
                        spans.append((length, start, special))
        if not spans:
            return tokens
        taken: set[int] = set()
        kept = []
        for length, start, special in sorted(spans, reverse=True):
            if start not in taken and start + length - 1 not in taken:
                kept.append((start, length, special))
            taken.update(range(start, start + length))
        out: list[str] = []
        position = 0
        for start, length, special in sorted(kept):
            out.extend(tokens[position:start])
            out.extend(self.specials[special])
            position = start + length
        out.extend(tokens[position:])
        return tuple(out)

    def piece_tokens(self, piece: str) -> tuple[str, ...]:
        """The tokens of one whitespace-free piece of text (remembered)."""
        tokens = self._cache.get(piece)
        if tokens is None:
            if self._untouched(piece) or (
                self._token_match is None
                and not (self._may_start(piece[0]) or self._may_end(piece[-1]) or self._may_cut(piece))
            ):
                self._cache[piece] = tokens = (piece,)  # no rule can cut it (special cases are memoised from start)
            else:
                tokens = self._remember(piece, self._affix_tokens(piece, touchable=True))
        return tokens

    def _bound_memory(self) -> None:
        """Forget every remembered piece (and the numbering) once there are too many, between documents."""
        if len(self._cache) > _CACHE_LIMIT or len(self._piece_ids) > _CACHE_LIMIT:
            self._cache = dict(self.specials)
            self._merged = set()
            self._forget_ids()

    def _number(self, pieces: list[str]) -> None:
        """Give each of these new pieces an id and its tokens' ids (a new token: an id, its length and hash), in
        C-level passes over the batch."""
        token_lists = list(map(self.piece_tokens, pieces))
        tokens = list(chain.from_iterable(token_lists))
        token_ids, texts = self._token_ids, self.token_texts
        new = list(set(tokens).difference(token_ids))  # the order of ids is immaterial: they only index tables
        token_ids.update(zip(new, range(len(texts), len(texts) + len(new))))
        texts.extend(new)
        self.token_lengths.extend(list(map(len, new)))
        self.token_hashes.extend(list(map(hash, new)))
        counts = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        self._piece_starts.extend(self._piece_tokens.size + np.cumsum(counts) - counts)
        self._piece_counts.extend(counts)
        self._piece_tokens.extend(list(map(token_ids.__getitem__, tokens)))
        piece_ids = self._piece_ids
        piece_ids.update(zip(pieces, range(len(piece_ids), len(piece_ids) + len(pieces))))

    def token_ids(self, pieces: list[str]) -> np.ndarray:
        """The ids of the tokens of these whitespace pieces (`text.split()`), in order: `words` as ids into
        `token_texts`, `token_lengths`, `token_hashes` (of this `generation`)."""
        piece_ids = self._piece_ids
        try:
            ids = np.fromiter(map(piece_ids.__getitem__, pieces), dtype=np.int64, count=len(pieces))
        except KeyError:
            self._bound_memory()
            self._number(list(set(pieces).difference(self._piece_ids)))
            ids = np.fromiter(map(self._piece_ids.__getitem__, pieces), dtype=np.int64, count=len(pieces))
        counts = self._piece_counts.data[ids]
        starts = self._piece_starts.data[ids]
        if len(counts) and counts.min() == counts.max() == 1:
            return self._piece_tokens.data[starts]
        # token k of the text is token (k - first token of its piece) of its piece
        firsts = np.cumsum(counts) - counts
        positions = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - firsts, counts)
        return self._piece_tokens.data[positions]

    def token_id(self, token: str) -> Optional[int]:
        """The id of this token (None: seen in no text yet)."""
        return self._token_ids.get(token)

    def words(self, text: str) -> list[str]:
        """datatrove's `split_into_words`: the tokens, whitespace dropped."""
        pieces = text.split()
        cache = self._cache
        try:
            return list(chain.from_iterable(map(cache.__getitem__, pieces)))
        except KeyError:
            self._bound_memory()
            cache = self._cache
            for piece in set(pieces).difference(cache):
                cache[piece] = self.piece_tokens(piece)
            return list(chain.from_iterable(map(cache.__getitem__, pieces)))

    def count_sentences(self, line: str) -> int:
        """Sentences of a stripped line as datatrove's `split_into_sentences` (spaCy's sentencizer) counts them."""
        punctuation = self.sentence_punctuation
        if not any(char in punctuation for char in line):
            return 1 if line else 0
        sentences = 0
        seen_end = False
        # Whitespace between pieces is a token of its own unless it is exactly one space; it is not punctuation.
        pieces = _WHITESPACE_RUN.split(line)
        gaps = _WHITESPACE_RUN.findall(line)
        for index, piece in enumerate(pieces):
            for token in self.piece_tokens(piece) if piece else ():
                if sentences == 0:
                    sentences = 1
                ends = token in punctuation
                if seen_end and not ends and not is_punct(token):
                    sentences += 1
                    seen_end = False
                elif ends:
                    seen_end = True
            # ...and starts a sentence after a sentence end, unless nothing follows it (a sentence of whitespace
            # only, which datatrove drops): citations cut out of a line can leave "end.  " behind.
            if index < len(gaps) and gaps[index] != " " and sentences and pieces[index + 1]:
                if seen_end:
                    sentences += 1
                    seen_end = False
        return sentences


@lru_cache(maxsize=None)
def word_tokenizer(language: str = "en") -> WordTokenizer:
    """One tokenizer (and one memo) per language and process."""
    return WordTokenizer(language)
