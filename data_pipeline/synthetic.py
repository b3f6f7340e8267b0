"""A procedural corpus with known structure and known defects: the default training data and the test oracle.

Clean documents come from a small stochastic grammar over an invented lexicon (pseudo-words built from
syllables, so no text is copied from anywhere): subject-verb agreement, a fixed particle after every verb and a
favourite companion after every noun (deterministic continuations a small model learns quickly), and a topic per
document that narrows the vocabulary. Every slot is a random draw, so two unrelated documents share almost no word
5-grams and MinHash sees them as far apart, while the text stays low-entropy enough for a ~1M-parameter model to
learn it in minutes.

On top of the clean documents the generator plants, and records in a truth table: exact duplicates (some with
case/spacing changes), near-duplicates edited to a target word-5-gram Jaccard similarity (the realised value is
measured and recorded), junk documents of several kinds that the heuristics must remove, and documents that
share a 13-gram with a generated evaluation set.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

_ONSETS = [
    "b",
    "br",
    "d",
    "dr",
    "f",
    "g",
    "gr",
    "k",
    "kl",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "r",
    "s",
    "st",
    "t",
    "tr",
    "v",
    "z",
    "sh",
    "th",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "n", "r", "l", "m", "k", "sk", "nd", "st"]
_PARTICLES = ["toward", "across", "beside", "under", "over", "through", "against", "around", "beyond", "along"]
_RESERVED = {"the", "be", "to", "of", "and", "that", "have", "with", "a", "an", "in", "on", "it", "is", "was"}


def _pseudo_words(rng: random.Random, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        n = rng.randint(*syllables)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)) + rng.choice(_CODAS)
        if 3 <= len(word) <= 10 and word not in taken and word not in _RESERVED and not word.endswith("s"):
            taken.add(word)
            words.append(word)
    return words


@dataclass
class Lexicon:
    nouns: list[str]
    verbs: list[str]
    adjectives: list[str]
    names: list[str]
    particle: dict[str, str]  # verb -> its fixed particle
    companion: dict[str, str]  # noun -> its favourite "of the ..." noun

    @classmethod
    def build(cls, seed: int = 1234) -> "Lexicon":
        rng = random.Random(seed)
        taken: set[str] = set()
        # A few hundred words: a 2048-token BPE gives most of them a token of their own, so a tiny model learns
        # the embeddings in a few hundred steps (a 1,600-word lexicon was measured to learn far slower).
        nouns = _pseudo_words(rng, 160, (1, 2), taken)
        verbs = _pseudo_words(rng, 60, (1, 2), taken)
        adjectives = _pseudo_words(rng, 60, (2, 2), taken)
        names = [w.capitalize() for w in _pseudo_words(rng, 40, (2, 3), taken)]
        particle = {v: rng.choice(_PARTICLES) for v in verbs}
        companion = {n: rng.choice(nouns) for n in nouns}
        return cls(nouns, verbs, adjectives, names, particle, companion)


@dataclass
class Topic:
    nouns: list[str]
    verbs: list[str]
    adjectives: list[str]
    names: list[str]


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("sh", "ch", "x", "z")) else "s")


def _third_person(verb: str) -> str:
    return verb + ("es" if verb.endswith(("sh", "ch", "x", "z", "o")) else "s")


class Grammar:
    """Sentences and documents from the lexicon; all randomness comes from the `rng` passed in."""

    def __init__(
        self,
        lexicon: Optional[Lexicon] = None,
        n_topics: int = 24,
        topic_seed: int = 99,
        topic_sizes: tuple[int, int, int, int] = (30, 15, 15, 5),
        off_topic: float = 0.1,
    ) -> None:
        self.lex = lexicon or Lexicon.build()
        self.off_topic = off_topic
        rng = random.Random(topic_seed)
        nouns, verbs, adjectives, names = topic_sizes
        self.topics = [
            Topic(
                rng.sample(self.lex.nouns, nouns),
                rng.sample(self.lex.verbs, verbs),
                rng.sample(self.lex.adjectives, adjectives),
                rng.sample(self.lex.names, names),
            )
            for _ in range(n_topics)
        ]

    # Draws: mostly from the document's topic, sometimes (`off_topic`) from everything.
    def _pick(self, rng: random.Random, local: list[str], everything: list[str]) -> str:
        return rng.choice(everything) if rng.random() < self.off_topic else rng.choice(local)

    def noun(self, rng, t: Topic) -> str:
        return self._pick(rng, t.nouns, self.lex.nouns)

    def verb(self, rng, t: Topic) -> str:
        return self._pick(rng, t.verbs, self.lex.verbs)

    def adj(self, rng, t: Topic) -> str:
        return self._pick(rng, t.adjectives, self.lex.adjectives)

    def name(self, rng, t: Topic) -> str:
        return self._pick(rng, t.names, self.lex.names)

    def noun_phrase(self, rng, t: Topic) -> tuple[str, bool]:
        """(phrase, plural?)"""
        form = rng.randrange(6)
        if form == 0:
            return f"the {self.adj(rng, t)} {self.noun(rng, t)}", False
        if form == 1:
            return f"the {self.noun(rng, t)}", False
        if form == 2:
            return self.name(rng, t), False
        if form == 3:
            return f"every {self.noun(rng, t)}", False
        if form == 4:
            return f"many {self.adj(rng, t)} {_plural(self.noun(rng, t))}", True
        return f"the {_plural(self.noun(rng, t))}", True

    def object_phrase(self, rng, t: Topic) -> str:
        noun = self.noun(rng, t)
        if rng.random() < 0.4:
            companion = self.lex.companion[noun] if rng.random() < 0.5 else self.noun(rng, t)
            return f"the {noun} of the {companion}"
        return f"the {self.adj(rng, t)} {noun}"

    def verb_phrase(self, rng, t: Topic, plural: bool) -> str:
        verb = self.verb(rng, t)
        form = rng.randrange(4)
        if form == 3:
            return f"will {verb} with {self.object_phrase(rng, t)}"
        agreed = verb if plural else _third_person(verb)
        if form == 0:
            return f"{agreed} {self.lex.particle[verb]} {self.object_phrase(rng, t)}"
        if form == 1:
            return f"{agreed} {self.object_phrase(rng, t)}"
        return f"{agreed} {self.lex.particle[verb]} {self.object_phrase(rng, t)} and {self.object_phrase(rng, t)}"

    def sentence(self, rng, t: Topic) -> str:
        subject, plural = self.noun_phrase(rng, t)
        form = rng.randrange(5)
        if form == 0:
            text = f"{subject} {self.verb_phrase(rng, t, plural)}"
        elif form == 1:
            text = f"{subject} {self.verb_phrase(rng, t, plural)} and {self.verb_phrase(rng, t, plural)}"
        elif form == 2:
            other, other_plural = self.noun_phrase(rng, t)
            text = (
                f"when {subject} {self.verb_phrase(rng, t, plural)}, {other} {self.verb_phrase(rng, t, other_plural)}"
            )
        elif form == 3:
            text = f"{self.name(rng, t)} said that {subject} {self.verb_phrase(rng, t, plural)}"
        else:
            text = f"in the {self.noun(rng, t)} of {self.name(rng, t)}, {subject} {self.verb_phrase(rng, t, plural)}"
        return text[0].upper() + text[1:] + "."

    def document(self, rng: random.Random, min_sentences: int = 6, max_sentences: int = 12) -> str:
        topic = rng.choice(self.topics)
        n = rng.randint(min_sentences, max_sentences)
        sentences = [self.sentence(rng, topic) for _ in range(n)]
        paragraphs, i = [], 0
        while i < n:
            size = rng.randint(3, 5)
            paragraphs.append(" ".join(sentences[i : i + size]))
            i += size
        return "\n\n".join(paragraphs)


# -------------------------------------------------------------------------------------------- planted defects
def word_shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Word n-grams of the lower-cased text (dedup is case-insensitive, so similarity is measured that way)."""
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate(
    text: str, target: float, rng: random.Random, vocabulary: list[str], n: int = 5
) -> tuple[str, float]:
    """Replace random words until the word-n-gram Jaccard with `text` drops to `target`; return (text, realised)."""
    lines = text.split("\n")
    positions = [(li, wi) for li, line in enumerate(lines) for wi in range(len(line.split()))]
    words = [line.split() for line in lines]
    original = word_shingles(text, n)
    order = rng.sample(positions, len(positions))
    current = text
    similarity = 1.0
    for li, wi in order:
        word = words[li][wi]
        replacement = rng.choice(vocabulary)
        words[li][wi] = replacement + word[len(word.rstrip(".,")) :]  # keep trailing punctuation
        candidate = "\n".join(" ".join(w) for w in words)
        candidate_similarity = jaccard(original, word_shingles(candidate, n))
        if candidate_similarity == 1.0:
            continue  # replaced a word by itself
        if (
            similarity < 1.0
            and candidate_similarity < target
            and abs(candidate_similarity - target) > abs(similarity - target)
        ):
            break
        current, similarity = candidate, candidate_similarity
        if similarity <= target:
            break
    return current, similarity


def junk_document(rng: random.Random, grammar: Grammar, kind: str) -> str:
    topic = rng.choice(grammar.topics)
    if kind == "short":
        return grammar.sentence(rng, topic)
    if kind == "symbols":
        words = " ".join(grammar.sentence(rng, topic) for _ in range(10)).split()
        return " ".join(w + (" #" * rng.randint(1, 3)) for w in words)
    if kind == "repeated_lines":
        line = grammar.sentence(rng, topic) + " " + grammar.sentence(rng, topic)
        return "\n".join([line] * rng.randint(8, 14))
    if kind == "lorem":
        return "Lorem ipsum dolor sit amet. " + grammar.document(rng)
    if kind == "numbers":
        return " ".join(str(rng.randint(0, 99999)) for _ in range(rng.randint(80, 200))) + "."
    if kind == "bullets":
        return "\n".join(
            f"- {rng.choice(grammar.lex.nouns)} {rng.choice(grammar.lex.verbs)}" for _ in range(rng.randint(20, 40))
        )
    raise ValueError(f"unknown junk kind {kind!r}")


JUNK_KINDS = ("short", "symbols", "repeated_lines", "lorem", "numbers", "bullets")


@dataclass
class SyntheticCorpus:
    documents: list[dict]  # {"id", "text"} in file order
    truth: dict  # id -> {"kind", ...}
    eval_set: list[str]
    near_pairs: list[dict] = field(default_factory=list)  # {"a", "b", "jaccard"}


def generate_corpus(
    n_clean: int = 1000,
    n_exact_dups: int = 50,
    n_near_dups: int = 100,
    near_targets: tuple[float, ...] = (0.97, 0.93, 0.9, 0.87, 0.75, 0.6, 0.45, 0.3),
    n_junk: int = 60,
    n_contaminated: int = 20,
    n_eval: int = 40,
    seed: int = 0,
) -> SyntheticCorpus:
    """A corpus of clean documents plus planted defects; `truth` says what each document is."""
    rng = random.Random(seed)
    grammar = Grammar()
    vocabulary = grammar.lex.nouns + grammar.lex.adjectives
    entries: list[tuple[str, dict]] = []
    clean = generate_clean_documents(n_clean, rng=rng, grammar=grammar)
    entries += [(text, {"kind": "clean", "index": i}) for i, text in enumerate(clean)]
    eval_rng = random.Random(seed + 10_007)
    eval_set = [
        " ".join(grammar.sentence(eval_rng, eval_rng.choice(grammar.topics)) for _ in range(3)) for _ in range(n_eval)
    ]
    for _ in range(n_exact_dups):
        i = rng.randrange(n_clean)
        text = clean[i]
        if rng.random() < 0.5:  # a copy differing only in spacing and case still counts as exact
            text = "  " + text.replace(". ", ".  ").upper() + "  "
        entries.append((text, {"kind": "exact_dup", "of_index": i}))
    for k in range(n_near_dups):
        i = rng.randrange(n_clean)
        target = near_targets[k % len(near_targets)]
        text, realised = near_duplicate(clean[i], target, rng, vocabulary)
        entries.append((text, {"kind": "near_dup", "of_index": i, "target": target, "jaccard": realised}))
    for k in range(n_junk):
        kind = JUNK_KINDS[k % len(JUNK_KINDS)]
        entries.append((junk_document(rng, grammar, kind), {"kind": "junk", "junk": kind}))
    for k in range(n_contaminated):
        leak = eval_set[k % n_eval]  # three sentences: always longer than a 13-gram
        base = generate_clean_documents(1, rng=rng, grammar=grammar)[0].split("\n\n")
        base.insert(rng.randrange(len(base) + 1), leak)
        entries.append(("\n\n".join(base), {"kind": "contaminated", "eval_index": k % n_eval}))
    rng.shuffle(entries)
    documents, truth, index_to_id = [], {}, {}
    for position, (text, info) in enumerate(entries):
        doc_id = f"doc-{position:06d}"
        documents.append({"id": doc_id, "text": text})
        truth[doc_id] = info
        if info["kind"] == "clean":
            index_to_id[info["index"]] = doc_id
    near_pairs = []
    for doc_id, info in truth.items():
        if "of_index" in info:
            info["of"] = index_to_id[info["of_index"]]
            if info["kind"] == "near_dup":
                near_pairs.append({"a": info["of"], "b": doc_id, "jaccard": info["jaccard"], "target": info["target"]})
    return SyntheticCorpus(documents, truth, eval_set, near_pairs)


def generate_clean_documents(
    n: int, seed: int = 0, rng: Optional[random.Random] = None, grammar: Optional[Grammar] = None
) -> list[str]:
    """`n` grammar documents, each passing the default heuristics.

    About 1 in 200 random documents repeats a long phrase by chance and fails Gopher's repetition rules; such a
    draw is rejected and redrawn, so "clean" in the truth table means "a filter with literature defaults keeps it".
    """
    from data_pipeline.document import Document
    from data_pipeline.steps.heuristics import Heuristics

    rng = rng or random.Random(seed)
    grammar = grammar or Grammar()
    heuristics = Heuristics()
    out: list[str] = []
    while len(out) < n:
        text = grammar.document(rng)
        if heuristics.check(Document("candidate", text))[1] is None:
            out.append(text)
    return out


def _write_lines_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def write_corpus(corpus: SyntheticCorpus, directory: str | os.PathLike, files: int = 1) -> dict[str, Path]:
    """corpus-XXXXX.jsonl (documents split over `files`), eval.jsonl, truth.json; returns their paths."""
    directory = Path(directory)
    corpus_dir = directory / "corpus"
    for f in range(files):
        part = corpus.documents[f::files]
        _write_lines_atomic(corpus_dir / f"corpus-{f:05d}.jsonl", [json.dumps(d, ensure_ascii=False) for d in part])
    _write_lines_atomic(directory / "eval.jsonl", [json.dumps({"text": t}) for t in corpus.eval_set])
    truth = {"documents": corpus.truth, "near_pairs": corpus.near_pairs}
    _write_lines_atomic(directory / "truth.json", [json.dumps(truth, indent=1)])
    return {"corpus": corpus_dir, "eval": directory / "eval.jsonl", "truth": directory / "truth.json"}


def write_arithmetic_shards(directory: str | os.PathLike, tokenizer_id: str) -> Path:
    """Two packed shards of 150 "arithmetic progression" documents each over a 256-token vocabulary (eos 0): a model
    learns them within a few steps, so the launcher's tests and benchmarks/gpu_check.py can see a run learn. Each
    document records its source, "small_steps" (steps of 1 or 2) or "large_steps" (3 or 4), as a mixed dataset's
    documents do, so held-out losses are also reported per source."""
    import numpy as np

    from data_pipeline.formats import ShardWriter

    directory = Path(directory)
    rng = np.random.default_rng(0)
    for s in range(2):
        with ShardWriter(directory, f"part{s}", vocab_size=256, eos_id=0, tokenizer_id=tokenizer_id) as writer:
            for _ in range(150):
                n = int(rng.integers(20, 200))
                first, step = int(rng.integers(1, 256)), int(rng.integers(1, 5))
                source = "small_steps" if step <= 2 else "large_steps"
                writer.add_document((first + step * np.arange(n)) % 255 + 1, source)
    return directory
