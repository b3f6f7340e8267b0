"""MinHash signatures for many documents at once, vectorised with numpy: >2x datasketch's bulk path per core.

datasketch hashes each shingle with SHA-1 in a Python loop and then permutes one document at a time. Here the
whole batch is handled as flat numpy arrays, which is where the speed comes from:
  * words: the batch is lower-cased and split on whitespace by one `str.split()` call; each distinct word is
    hashed once (a memo maps it to a row of a hash array, so the Python work per word is one dict lookup) by simple
    tabulation hashing over its UTF-8 bytes (a random 64-bit table entry per (position mod 32, byte),
    XOR-reduced per word with `np.bitwise_xor.reduceat`), finalised with the splitmix64 mixer. Tabulation
    hashing is 3-independent, vectorises and is deterministic across processes (unlike Python's salted `hash`).
  * shingles: word n-grams are combined as sum(word_hash[i + k] * odd_constant[k]) mod 2**64 over contiguous
    slices of the batch's word array, finalised with splitmix64, so order matters and no Python object is made
    per shingle. A document shorter than n words gets
    one shingle of all its words (an empty document gets the shingle of nothing, so empty documents match).
  * permutations: h_p(x) = (a_p * x + b_p) mod 2**64 with odd a_p (multiply-add, uint64 wrap-around, no modulo
    by a prime), the minimum taken over all shingles of a document with `np.minimum.reduceat`, and the top 32
    bits kept. The inputs are already well mixed, so this family behaves as min-wise independent in practice
    (tests check the Jaccard estimate is unbiased against exact Jaccard).
Signatures therefore differ bit-for-bit from datasketch's; dedup decisions agree (benchmarks/bench_minhash.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

_WORD_POSITIONS = 32  # tabulation table rows: byte positions within a word, modulo this
_BLOCK_ELEMENTS = 1 << 19  # shingles x permutations per working block (4 MiB of uint64): stays in cache
_U64 = np.uint64
_SENTINEL = "\x00"  # not whitespace for str.split(), and the normalize step strips control characters
_SENTINEL_JOIN = f" {_SENTINEL} "
_MEMO_LIMIT = 2_000_000  # distinct words remembered per hasher (~200 MB at most) before the memo restarts


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on a uint64 array): full avalanche, so low-quality inputs become uniform."""
    with np.errstate(over="ignore"):
        x ^= x >> _U64(30)
        x *= _U64(0xBF58476D1CE4E5B9)
        x ^= x >> _U64(27)
        x *= _U64(0x94D049BB133111EB)
        x ^= x >> _U64(31)
    return x


@dataclass
class MinHasher:
    """Word n-gram MinHash with `num_perm` permutations; same parameters and seed give the same signatures."""

    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    _table: np.ndarray = field(init=False, repr=False)
    _gram_mult: np.ndarray = field(init=False, repr=False)
    _a: np.ndarray = field(init=False, repr=False)
    _b: np.ndarray = field(init=False, repr=False)
    _memo: dict = field(init=False, repr=False)
    _memo_hashes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.num_perm < 1:
            raise ValueError(f"num_perm={self.num_perm}: need at least one permutation")
        if self.ngram < 1:
            raise ValueError(f"ngram={self.ngram}: word n-grams need n >= 1")
        rng = np.random.Generator(np.random.PCG64(self.seed))
        full = np.iinfo(np.uint64).max
        self._table = rng.integers(0, full, size=(_WORD_POSITIONS, 256), dtype=np.uint64, endpoint=True)
        self._gram_mult = rng.integers(0, full, size=self.ngram, dtype=np.uint64, endpoint=True) | _U64(1)
        self._a = rng.integers(0, full, size=self.num_perm, dtype=np.uint64, endpoint=True) | _U64(1)
        self._b = rng.integers(0, full, size=self.num_perm, dtype=np.uint64, endpoint=True)
        self._memo = {}
        self._memo_hashes = np.zeros(0, dtype=np.uint64)

    # ------------------------------------------------------------------ words and shingles
    def hash_words(self, words: Sequence[str]) -> np.ndarray:
        """Tabulation hash (64-bit) of each word's UTF-8 bytes, all words at once."""
        if not words:
            return np.zeros(0, dtype=np.uint64)
        encoded = [w.encode("utf-8", "surrogatepass") for w in words]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        position = (np.arange(data.size) - np.repeat(starts, lengths)) % _WORD_POSITIONS
        values = self._table[position, data]
        hashes = np.zeros(len(words), dtype=np.uint64)
        nonempty = lengths > 0
        if data.size:
            hashes[nonempty] = np.bitwise_xor.reduceat(values, starts[nonempty])
        with np.errstate(over="ignore"):
            hashes ^= lengths.astype(np.uint64) * _U64(0x9E3779B97F4A7C15)
        return _splitmix64(hashes)

    def word_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit hashes of the lower-cased whitespace-separated words of each text, and per-document word counts.

        The batch is lower-cased and split by one `str.split()` call (documents joined by a sentinel word), and
        each distinct word is hashed once: a per-hasher memo maps words to rows of a hash array, so the Python
        work per word is one dict lookup. The memo only caches a pure function, so output never depends on it.
        """
        words = _SENTINEL_JOIN.join(texts).lower().split()
        lookup = self._memo
        try:  # once the memo is warm, nearly every batch takes this path: one dict lookup per word
            ids = np.fromiter(map(lookup.__getitem__, words), dtype=np.int64, count=len(words))
        except KeyError:
            new_words = [w for w in set(words) if w not in lookup]
            if len(lookup) + len(new_words) > _MEMO_LIMIT:
                lookup.clear()
                self._memo_hashes = np.zeros(0, dtype=np.uint64)
                new_words = list(set(words))
            base = len(lookup)
            lookup.update(zip(new_words, range(base, base + len(new_words))))
            self._memo_hashes = np.concatenate([self._memo_hashes, self.hash_words(new_words)])
            ids = np.fromiter(map(lookup.__getitem__, words), dtype=np.int64, count=len(words))
        if len(texts) > 1:
            is_sentinel = ids == lookup[_SENTINEL]
            boundaries = np.flatnonzero(is_sentinel)
            if boundaries.size != len(texts) - 1:  # a document contains the sentinel word itself
                per_doc = [self.word_hashes([t]) for t in texts]
                return (
                    np.concatenate([h for h, _ in per_doc]) if per_doc else np.zeros(0, np.uint64),
                    np.concatenate([c for _, c in per_doc]),
                )
            counts = np.diff(np.concatenate([[-1], boundaries, [ids.size]])) - 1
            ids = ids[~is_sentinel]
        else:
            counts = np.array([ids.size] * len(texts), dtype=np.int64)
        return self._memo_hashes[ids], counts.astype(np.int64)

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every word n-gram, documents back to back, and each document's shingle count (>= 1)."""
        words, counts = self.word_hashes(texts)
        n = self.ngram
        word_offsets = np.concatenate([[0], np.cumsum(counts)])
        n_full = np.maximum(counts - n + 1, 0)
        n_words = words.size
        with np.errstate(over="ignore"):
            # n-grams at every word position of the batch (contiguous slices, no gathers), then keep those that
            # stay inside their document.
            n_windows = max(n_words - n + 1, 0)
            grams = np.zeros(n_windows, dtype=np.uint64)
            for k in range(n):
                grams += words[k : k + n_windows] * self._gram_mult[k]
            doc_end = np.repeat(word_offsets[1:], counts)[:n_windows]
            grams = grams[doc_end - np.arange(n_windows) >= n]
            # Documents with fewer than n words: one shingle of all their words (possibly none).
            short = np.flatnonzero(n_full == 0)
            if short.size:
                padded = np.concatenate([words, np.zeros(n, dtype=np.uint64)])
                short_grams = counts[short].astype(np.uint64) * _U64(0xD6E8FEB86659FD93)
                for k in range(n - 1):
                    present = counts[short] > k
                    short_grams += np.where(present, padded[word_offsets[short] + k] * self._gram_mult[k], _U64(0))
                insert_at = (np.cumsum(n_full) - n_full)[short]
                grams = np.insert(grams, insert_at, short_grams)
        return _splitmix64(grams), np.maximum(n_full, 1)

    # ------------------------------------------------------------------ signatures
    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """uint32 signatures [len(texts), num_perm]."""
        shingles, counts = self.shingle_hashes(texts)
        n_docs = len(texts)
        sig = np.full((n_docs, self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        if n_docs == 0:
            return sig.astype(np.uint32)
        doc_of_shingle = np.repeat(np.arange(n_docs), counts)
        block = max(1, _BLOCK_ELEMENTS // self.num_perm)
        # Permutations x shingles, so the per-document minimum is a reduceat along contiguous rows (fast).
        buf = np.empty((self.num_perm, block), dtype=np.uint64)
        a, b = self._a[:, None], self._b[:, None]
        with np.errstate(over="ignore"):
            for lo in range(0, shingles.size, block):
                hi = min(lo + block, shingles.size)
                work = buf[:, : hi - lo]
                np.multiply(a, shingles[None, lo:hi], out=work)
                np.add(work, b, out=work)
                docs = doc_of_shingle[lo:hi]
                seg = np.flatnonzero(np.diff(docs, prepend=-1))
                mins = np.minimum.reduceat(work, seg, axis=1)
                first, last = int(docs[0]), int(docs[-1]) + 1
                np.minimum(sig[first:last], mins.T, out=sig[first:last])
        return (sig >> _U64(32)).astype(np.uint32)
