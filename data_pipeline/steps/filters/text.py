"""Measurements shared by the rule families, defined as datatrove defines them (FineWeb's thresholds were tuned on
datatrove's counts): words are its word tokenizer's tokens (`words.WordTokenizer`, spaCy's rules: punctuation and
symbols are words of their own), duplicated items are counted against the items seen before, and two character
sets are datatrove's: the punctuation that makes a token a "symbol" and the sentence-final characters FineWeb's
line rule looks for.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from data_pipeline.steps.filters.words import Column, WordTokenizer, word_tokenizer

# datatrove's TERMINAL_PUNCTUATION: Unicode's Sentence_Terminal characters as of Unicode 15 and three Khmer signs
# (U+17D6, U+17D9, U+17DA). A line ending in one of them counts as ending a sentence (FineWeb's line rule).
TERMINAL_PUNCTUATION = frozenset(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a"
    "\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945"
    "\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d"
    "\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce"
    "\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f"
    "\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87"
    "\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142"
    "\U00011143\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c"
    "\U000112a9\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd"
    "\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7"
    "\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b"
    "\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5"
    "\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
# datatrove's PUNCTUATION (ASCII and CJK punctuation, a few symbols, control characters but tab and newline) with
# the terminal punctuation: a token made only of these is a symbol, not a word (Gopher's quality rules).
PUNCTUATION = (
    frozenset(
        "\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\u0008\u000b\u000c\u000d\u000e\u000f\u0010\u0011"
        "\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f!\u0022#$%&'()*+"
        ",-./:;<=>?@[\u005c]^_`{|}~\u007f\u0080\u0081\u0082\u0083\u0084\u0085\u0086\u0087\u0088\u0089\u008a"
        "\u008b\u008c\u008d\u008e\u008f\u0090\u0091\u0092\u0093\u0094\u0095\u0096\u0097\u0098\u0099\u009a"
        "\u009b\u009c\u009d\u009e\u009f\u00ab\u00b4\u00bb\u2013\u2014\u2019\u201c\u201d\u201e\u2026\u2236"
        "\u2501\u25ba\u3001\u3002\u3008\u3009\u300a\u300b\u300c\u300d\u3010\u3011\uff01\uff05\uff08\uff09"
        "\uff0c\uff0e\uff11\uff1a\uff1b\uff1f\uff5e"
    )
    | TERMINAL_PUNCTUATION
)


class Words:
    """A text's word tokens (datatrove's `split_into_words`) as ids into its tokenizer's numbering, and the per-token
    figures the families read, gathered at numpy speed: the tokens as strings are never listed."""

    def __init__(self, text: str, tokenizer: WordTokenizer) -> None:
        self.text = text
        self.pieces = text.split()
        self.tokenizer = tokenizer
        self.ids = tokenizer.token_ids(self.pieces)
        self.generation = tokenizer.generation  # read after: numbering the pieces may have restarted it

    def __len__(self) -> int:
        return len(self.ids)

    def _current_ids(self) -> np.ndarray:
        if self.generation != self.tokenizer.generation:  # the tokenizer forgot its numbering since: renumber
            self.ids = self.tokenizer.token_ids(self.pieces)
            self.generation = self.tokenizer.generation
        return self.ids

    def strings(self) -> list[str]:
        texts = self.tokenizer.token_texts
        return [texts[i] for i in self._current_ids().tolist()]

    def lengths(self) -> np.ndarray:
        """len() of each token (int64)."""
        return self.tokenizer.token_lengths.data[self._current_ids()]

    def hashes(self) -> np.ndarray:
        """hash() of each token (uint64 bits)."""
        return self.tokenizer.token_hashes.data[self._current_ids()].view(np.uint64)

    def joined(self) -> str:
        """The tokens concatenated: the pieces concatenated (a piece's tokens join to it; special cases are checked
        to, when the tokenizer is built)."""
        return "".join(self.pieces)

    def classes(self) -> tuple[np.ndarray, np.ndarray]:
        """For each token: whether it is a word (not made only of `PUNCTUATION`), whether it holds a letter."""
        ids = self._current_ids()
        facts = _facts(self.tokenizer)
        return facts.word.data[ids], facts.alpha.data[ids]

    def holds(self, token: str) -> bool:
        """Whether the token is one of the text's tokens."""
        ids = self._current_ids()
        token_id = self.tokenizer.token_id(token)
        return token_id is not None and bool((ids == token_id).any())


class _TokenFacts:
    """Per token id (of one tokenizer's numbering): word or symbol, with a letter or not; filled as ids appear."""

    def __init__(self) -> None:
        self.word = Column(bool)
        self.alpha = Column(bool)

    def update(self, texts: list[str]) -> None:
        new = texts[self.word.size :]
        if new:
            punctuation = PUNCTUATION
            self.word.extend([not punctuation.issuperset(token) for token in new])
            self.alpha.extend([any(map(str.isalpha, token)) for token in new])


def _facts(tokenizer: WordTokenizer) -> _TokenFacts:
    facts = tokenizer.per_token.get("word_classes")  # emptied with the numbering
    if facts is None:
        facts = tokenizer.per_token["word_classes"] = _TokenFacts()
    facts.update(tokenizer.token_texts)
    return facts


_last: Optional[Words] = None


def words_of(text: str, language: str = "en") -> Words:
    """The text's word tokens (datatrove's `split_into_words`), remembered for the last text: the families of one
    chain measure the same string."""
    global _last
    tokenizer = word_tokenizer(language)
    if _last is None or text is not _last.text or tokenizer is not _last.tokenizer:
        _last = Words(text, tokenizer)
    return _last


def duplicated(items: list[str]) -> tuple[int, int]:
    """(number of items equal to an earlier item, their characters), from two C-level passes."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))
