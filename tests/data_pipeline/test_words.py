"""The word tokenizer the filters count with gives spaCy's tokens and sentences (datatrove's English word
tokenizer is `spacy.blank("en")` with the sentencizer), and its faster regex search finds what `re` finds."""

from __future__ import annotations

import json
import random
import re

import pytest

from data_pipeline.steps.filters.regex_edges import AnchoredAlternation, InfixFinder
from data_pipeline.steps.filters.words import RULES_DIR, WordTokenizer
from tests.data_pipeline.machine_docs import machine_documents

HARD = (
    "Don't stop: e.g. U.S.A. cannot http://x.org/a?b=1 $10.50 hello-world (see 3.4). ***** ... end.\n"
    '\t.. c:function:: int  PyObject_Print(PyObject *o, FILE *fp)  x:) :-) <3 10km 5pm C++ and/or "quoted," it\'s\n'
    "\\fB--help\\fR [citation needed] 'tis ¿Qué? ==== ---- https://example.com/x. user@example.org Mr. Smith's."
)


@pytest.fixture(scope="module")
def spacy_nlp():
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    return nlp


def _spacy_words(nlp, text):
    with nlp.memory_zone():
        return [t.text.strip() for t in nlp.make_doc(text) if t.text.strip()]


def test_rule_tables_are_spacys_current_ones():
    import spacy

    rules = json.loads((RULES_DIR / "en.json").read_text(encoding="utf-8"))
    assert rules["spacy_version"].split(".")[:2] == spacy.__version__.split(".")[:2], (
        "spaCy changed: rerun `python -m data_pipeline.steps.filters.word_rules.export en`"
    )
    tokenizer = spacy.blank("en").tokenizer
    assert rules["suffix"] == tokenizer.suffix_search.__self__.pattern
    assert len(rules["special_cases"]) == len(tokenizer.rules)


def test_hard_cases_tokenize_as_spacy(spacy_nlp):
    ours = WordTokenizer("en")
    assert ours.words(HARD) == _spacy_words(spacy_nlp, HARD)
    assert ours.words("x:)") == ["x", ":)"]  # a special case the affix rules cut, merged back as spaCy does
    # whitespace other than one space is a token: after a sentence end it starts a sentence, unless it ends the line
    lines = ["Foo bar.  ", "Foo bar.  baz", "Foo. \t. x", " Foo. Bar", "One.  Two.  ", "x ?  ", "Mr. Smith left. Then"]
    with spacy_nlp.memory_zone():
        theirs = [sum(1 for s in spacy_nlp(line).sents if s.text.strip()) for line in lines]
    assert [ours.count_sentences(line) for line in lines] == theirs


def test_documents_tokenize_and_split_into_sentences_as_spacy(spacy_nlp):
    documents = machine_documents()
    sample = documents[:: max(1, len(documents) // 60)][:60]
    ours = WordTokenizer("en")
    same = sum(ours.words(text) == _spacy_words(spacy_nlp, text) for _, text in sample)
    assert same >= 0.98 * len(sample), f"{same}/{len(sample)} documents tokenized as spaCy does"
    lines = [line.strip() for _, text in sample[:20] for line in text.splitlines() if line.strip()][:3000]
    with spacy_nlp.memory_zone():
        theirs = [sum(1 for s in spacy_nlp(line).sents if s.text.strip()) for line in lines]
    assert [ours.count_sentences(line) for line in lines] == theirs


def test_unknown_language_names_the_export_command():
    with pytest.raises(ValueError, match="word_rules.export xx"):
        WordTokenizer("xx")


def test_edge_search_finds_what_re_finds():
    rules = json.loads((RULES_DIR / "en.json").read_text(encoding="utf-8"))
    rng = random.Random(0)
    alphabet = "aZ09.,;:!?'\"()[]{}-–—/\\$€%+*^_#@<>=~`…°FkmsS’ \u00e9\u4e2d"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))).replace(" ", "") for _ in range(3000)]
    texts = [t for t in texts if t] + list(HARD.split())
    prefix, suffix = AnchoredAlternation(rules["prefix"], at_end=False), AnchoredAlternation(rules["suffix"], True)
    infix = InfixFinder(rules["infix"])
    whole_prefix, whole_suffix = re.compile(rules["prefix"]).search, re.compile(rules["suffix"]).search
    whole_infix = re.compile(rules["infix"]).finditer
    span = lambda m: m and m.span()  # noqa: E731
    for text in texts:
        assert span(prefix.search(text)) == span(whole_prefix(text)), text
        assert span(suffix.search(text)) == span(whole_suffix(text)), text
        assert infix.spans(text) == [m.span() for m in whole_infix(text)], text
