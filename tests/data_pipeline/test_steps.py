"""Each step's algorithm on small hand-made inputs, run in memory through the step base (no executor)."""

from __future__ import annotations

import json
import re

import pytest

from data_pipeline.document import Document
from data_pipeline.steps import TaskContext, build_step
from data_pipeline.steps.heuristics import Heuristics
from data_pipeline.synthetic import JUNK_KINDS, Grammar, generate_clean_documents, junk_document

CLEAN = generate_clean_documents(40, seed=21)


def docs(texts, prefix="d"):
    return [Document(f"{prefix}{i:03d}", t, {}) for i, t in enumerate(texts)]


def c4_lines(text):
    """The text as C4 writes back what it keeps: each line stripped, blank lines gone (as datatrove's C4 filter)."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def test_normalize_nfc_controls_whitespace_and_boilerplate():
    step = build_step("normalize", {"boilerplate_patterns": [r"(?i)^subscribe now"]})
    decomposed = "Cafe\u0301 \u200b au\t\t lait\x07.\r\n\n\n\nSubscribe now to our list\n  second   line.  "
    out = step(docs([decomposed, "\x00 \u200b \n"]))
    # An indented line is preformatted: it keeps its leading whitespace and inner spacing (indentation: keep).
    assert [d.text for d in out] == ["Caf\u00e9 au lait.\n\n  second   line."]
    assert [(d.id, r) for d, r, _ in step.context.excluded] == [("d001", "normalize:empty")]
    strip = build_step("normalize", {"boilerplate_patterns": [r"(?i)^subscribe now"], "indentation": "strip"})
    assert [d.text for d in strip(docs([decomposed]))] == ["Caf\u00e9 au lait.\n\nsecond line."]
    with pytest.raises(ValueError, match="normalize.indentation"):
        build_step("normalize", {"indentation": "tabs"})
    with pytest.raises(ValueError, match="boilerplate_patterns"):
        build_step("normalize", {"boilerplate_patterns": ["("]})


def test_exact_dedup_keeps_lowest_id_across_case_and_spacing():
    texts = [CLEAN[0], CLEAN[1], "  " + CLEAN[0].upper(), CLEAN[0]]
    step = build_step("exact_dedup")
    documents = [Document(i, t) for i, t in zip(["c", "b", "a", "d"], texts)]
    kept = step(documents)
    assert [d.id for d in kept] == ["b", "a"]
    assert sorted((d.id, r, x["kept"]) for d, r, x in step.context.excluded) == [
        ("c", "exact_dedup:duplicate", "a"),
        ("d", "exact_dedup:duplicate", "a"),
    ]


@pytest.mark.parametrize("kind", JUNK_KINDS)
def test_heuristics_remove_each_junk_kind(kind):
    import random

    grammar = Grammar()
    rng = random.Random(JUNK_KINDS.index(kind))
    step = Heuristics()
    junk = [junk_document(rng, grammar, kind) for _ in range(5)]
    assert step(docs(junk)) == []
    assert step(docs(CLEAN)) == docs(CLEAN)  # kept whole, as they came (c4.rewrite: none)


def test_heuristics_thresholds_are_configurable_and_checked():
    text = CLEAN[0]
    words = len(text.split())
    strict = build_step("heuristics", {"gopher_quality": {"min_words": words + 1}})
    assert strict(docs([text])) == []
    ((_, rule, details),) = strict.context.excluded
    assert (rule, details["value"], details["threshold"]) == ("gopher_quality:min_words", words, words + 1)
    off = build_step("heuristics", {"gopher_quality": {"min_words": words + 1}, "c4": False})
    assert [f.name for f in off.filters] == ["gopher_repetition", "gopher_quality", "fineweb"]
    with pytest.raises(ValueError, match="heuristics.c4.min_sentence"):
        build_step("heuristics", {"c4": {"min_sentence": 3}})
    with pytest.raises(ValueError, match="heuristics.order"):
        build_step("heuristics", {"order": ["c4", "gopher"]})
    dup = build_step("heuristics", {"gopher_repetition": {"dup_ngram_char_frac": {5: 0.0}}})
    repeated = CLEAN[1] + "\n\n" + CLEAN[1].split("\n\n")[0].split(". ")[0] + " and more words here."
    assert dup(docs([repeated])) == []
    assert dup.context.excluded[0][1] == "gopher_repetition:dup_5gram_char_frac"


def test_c4_terminal_punctuation_rule_is_off_by_default_and_one_keyword_away():
    menu = "Home | About | Contact\n" + CLEAN[2] + "\nShare this\nuse javascript to see the page."
    # Off (FineWeb's setting): only the short "Share this" line and the javascript line go.
    as_datatrove = {"rewrite": "datatrove"}
    fineweb_like = Heuristics(fineweb=False, gopher_repetition=False, c4=as_datatrove)(docs([menu]))
    assert fineweb_like[0].text == "Home | About | Contact\n" + c4_lines(CLEAN[2])
    strict = {"remove_no_terminal_punct_lines": True, **as_datatrove}
    assert Heuristics(fineweb=False, gopher_repetition=False, c4=strict)(docs([menu]))[0].text == c4_lines(CLEAN[2])
    # original_lines: the same lines go, the others (blank lines between them too) are written as they came.
    original = Heuristics(fineweb=False, gopher_repetition=False, c4={"rewrite": "original_lines"})
    assert original(docs([menu]))[0].text == "Home | About | Contact\n" + CLEAN[2]
    # none (the default): decided the same way, written unchanged.
    assert Heuristics(fineweb=False, gopher_repetition=False)(docs([menu]))[0].text == menu


def test_decontaminate_drops_shared_13_grams(tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    leak = " ".join(CLEAN[3].split()[10:23])  # 13 words
    eval_file.write_text(json.dumps({"text": "question: " + leak + " answer"}) + "\n")
    step = build_step("decontaminate", {"eval_sets": [str(eval_file)]})
    near_miss = " ".join(CLEAN[3].split()[10:22])  # 12 words only
    out = step(docs([CLEAN[3], CLEAN[4] + " " + near_miss, CLEAN[5]]))
    assert [d.id for d in out] == ["d001", "d002"]
    details = step.context.excluded[0][2]
    assert (details["value"], details["threshold"], details["eval_set"]) == (1, 0, "eval.jsonl")
    assert details["ngram"] == " ".join(re.findall(r"\w+", leak.lower()))
    assert not build_step("decontaminate", {"eval_sets": []}).enabled()
    with pytest.raises(ValueError, match="does not exist"):
        build_step("decontaminate", {"eval_sets": [str(tmp_path / "missing.jsonl")]})


def test_mix_hits_proportions_deterministically_with_a_repeat_cap():
    documents = [Document(f"a{i}", CLEAN[i % 40], {"source": "a"}) for i in range(300)] + [
        Document(f"b{i}", CLEAN[i % 40], {"source": "b"}) for i in range(60)
    ]
    words = {s: sum(len(d.text.split()) for d in documents if d.metadata["source"] == s) for s in "ab"}
    target = words["a"]  # wants half of a (downsample) and 1/2 * target of b = 2.5x b (upsample)
    step = build_step("mix", {"weights": {"a": 0.5, "b": 0.5}, "target_tokens": target, "max_repeats": 2})
    out = step(documents)
    realised = {s: sum(len(d.text.split()) for d in out if d.metadata["source"] == s) for s in "ab"}
    assert abs(realised["a"] / (target / 2) - 1) < 0.15
    assert realised["b"] == 2 * words["b"]  # capped at 2 repeats
    assert sum(1 for d in out if "#rep" in d.id) == 60
    again = build_step("mix", {"weights": {"a": 0.5, "b": 0.5}, "target_tokens": target, "max_repeats": 2})
    assert [d.id for d in again(list(reversed(documents)))] != [] and sorted(d.id for d in again(documents)) == sorted(
        d.id for d in out
    )
    with pytest.raises(ValueError, match="mix.weights"):
        build_step("mix", {"target_tokens": 10})


def test_classifier_trained_on_1200_documents_is_small_reports_heldout_precision_and_filters(tmp_path):
    import random

    from data_pipeline.steps.classifier import train_classifier

    rng = random.Random(0)
    grammar = Grammar()
    good = generate_clean_documents(600, seed=8)
    bad = [junk_document(rng, grammar, k) for k in ["numbers", "symbols", "bullets"] * 100]
    bad += [" ".join(rng.sample(t.split(), len(t.split()))) for t in good[:300]]  # word salad of good text
    positive, negative = tmp_path / "pos.txt", tmp_path / "neg.txt"
    positive.write_text("\n".join(t.replace("\n", " ") for t in good) + "\n")
    negative.write_text("\n".join(t.replace("\n", " ") for t in bad) + "\n")
    result = train_classifier(str(positive), str(negative), str(tmp_path / "quality.bin"))
    assert result.quantized and result.train_examples + result.heldout_examples == 1200
    assert result.heldout_examples == 120
    assert result.size_bytes <= 20 * 2**20, result.summary()
    assert result.precision is not None and result.precision >= 0.9 and result.recall >= 0.9, result.summary()
    assert "precision" in result.summary() and "recall" in result.summary()
    step = build_step("classifier", {"model_path": result.model, "threshold": 0.5})
    test_junk = [junk_document(rng, grammar, k) for k in ["numbers", "symbols", "bullets"]]
    out = step(docs(CLEAN[:10] + test_junk))
    assert [d.id for d in out] == [f"d{i:03d}" for i in range(10)]
    assert all(d.metadata["quality_score"] >= 0.5 for d in out)
    assert len(step.context.scores["quality_score"]) == 13
    assert {x["threshold"] for _, _, x in step.context.excluded} == {0.5}
    with pytest.raises(ValueError, match="train-classifier"):
        build_step("classifier", {"model_path": str(tmp_path / "missing.bin")})
    assert not build_step("classifier", {}).enabled()  # no model: the step is skipped


def test_lang_id_keeps_listed_languages(tmp_path):
    import fasttext

    # A tiny language-id model: "en" is the synthetic grammar, "xx" the same text reversed letter by letter.
    train = tmp_path / "lid.txt"
    texts = generate_clean_documents(100, seed=9)
    train.write_text(
        "".join(f"__label__en {t.replace(chr(10), ' ')}\n__label__xx {t[::-1].replace(chr(10), ' ')}\n" for t in texts)
    )
    fasttext.train_supervised(
        input=str(train), epoch=25, lr=1.0, minn=2, maxn=4, dim=16, thread=1, verbose=0
    ).save_model(str(tmp_path / "lid.bin"))
    step = build_step("lang_id", {"model_path": str(tmp_path / "lid.bin"), "languages": ["en"], "threshold": 0.6})
    out = step(docs([CLEAN[0], CLEAN[1][::-1], CLEAN[2]]))
    assert [d.id for d in out] == ["d000", "d002"]
    assert out[0].metadata["language"] == "en" and out[0].metadata["language_score"] >= 0.6
    assert step.context.excluded[0][1] == "lang_id:other_language"
    assert step.context.excluded[0][0].metadata["language"] == "xx"
    assert step.context.excluded[0][2]["threshold"] == ["en"] and 0 < step.context.excluded[0][2]["value"] <= 1
    with pytest.raises(ValueError, match="model_path"):
        build_step("lang_id", {"model_path": str(tmp_path / "missing.bin")})


def test_registry_errors_name_the_step_and_key():
    with pytest.raises(ValueError, match="unknown step 'dedup'"):
        build_step("dedup")
    with pytest.raises(ValueError, match="normalize.*bogus"):
        build_step("normalize", {"bogus": 1})


def test_a_filter_is_one_method_and_the_base_class_records_rule_value_and_threshold():
    from data_pipeline.steps.base import FilterStep, annotate, reject

    class ShortDocuments(FilterStep):
        name = "short_documents"
        setups = 0

        def setup(self):
            self.setups += 1

        def filter(self, doc):
            n = len(doc.text.split())
            annotate(doc, words=n)  # an annotator too: the kept document and the exclusion record carry it
            return True if n >= 5 else reject("few_words", n, 5)

    step = ShortDocuments()
    given = docs(["one two three", CLEAN[0], CLEAN[1]])
    kept = step(given)
    assert [d.id for d in kept] == ["d001", "d002"] and step.setups == 1
    assert kept[0].metadata["words"] == len(CLEAN[0].split()) and "words" not in given[1].metadata
    assert [(d.id, rule, x, d.metadata) for d, rule, x in step.context.excluded] == [
        ("d000", "short_documents:few_words", {"value": 3, "threshold": 5}, {"words": 3}),
    ]
    assert step.context.counters["excluded.short_documents:few_words"] == 1
    assert step.context.scores["excluded_value/short_documents:few_words"] == [3.0]

    class Broken(FilterStep):
        def __init__(self, verdict):
            super().__init__()
            self.verdict = verdict

        def filter(self, doc):
            return self.verdict

    # A drop names its rule, the value and the threshold: datatrove's bare False or a drop without them is refused.
    for verdict in ("not a verdict", False, (False, "few_words"), (False, "", {"value": 1, "threshold": 2})):
        with pytest.raises(TypeError, match="Broken.filter returned"):
            Broken(verdict)(docs(["x"]))
    with pytest.raises(ValueError, match="'<step>:<rule>'"):
        TaskContext(step_name="mine").exclude(Document("x", "x"), "no_step_name", 1, 2)
