"""The default pipeline on real text nobody on this project wrote (package READMEs, standard-library docstrings,
licence texts; see real_text.py): the documents it keeps keep their words, every exclusion says which rule, what
it measured and the threshold, and the report gives wall and CPU time apart and the funnel in words."""

from __future__ import annotations

import json
import os

import pytest
from real_text import real_text_corpus

from data_pipeline.cli import main
from data_pipeline.document import Document
from data_pipeline.shards import read_records
from data_pipeline.steps.heuristics import Heuristics

MIN_DOCUMENTS = 60


@pytest.fixture(scope="module")
def corpus():
    docs, counts = real_text_corpus()
    if len(docs) < MIN_DOCUMENTS:
        pytest.skip(f"only {len(docs)} real documents on this machine ({counts}); the check needs {MIN_DOCUMENTS}")
    return docs


@pytest.fixture(scope="module")
def real_run(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_text")
    source = root / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": doc_id, "text": text}) + "\n" for doc_id, text in corpus))
    out = root / "out"
    env = {
        "WANDB_MODE": None,
        "WANDB_API_KEY": None,
        "WANDB_DIR": str(root),
        "WANDB_CACHE_DIR": str(root / "wc"),
        "WANDB_CONFIG_DIR": str(root / "wcfg"),
        "WANDB_DATA_DIR": str(root / "wd"),
    }
    saved = {k: os.environ.get(k) for k in env}
    for key, value in env.items():  # no API key and no mode: the report must choose offline by itself
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    try:
        code = main(
            [
                "run",
                "pipeline=default",
                f"input={source}",
                f"output={out}",
                "tasks=2",
                "wandb=true",
                "pipeline.steps.7.params.vocab_size=600",
            ]
        )
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    assert code == 0
    return corpus, out


def _records(directory):
    for path in sorted(directory.glob("*/shard-*.jsonl*")):  # kept documents (.jsonl), exclusions (.jsonl.zst)
        for record in read_records(path):
            yield path.parent.name, record


def test_kept_documents_keep_their_words(real_run):
    corpus, out = real_run
    words_in = {doc_id: len(text.split()) for doc_id, text in corpus}
    steps = list(json.loads((out / "summary.json").read_text()))
    assert steps[-2:] == ["pii", "tokenize"]  # decontaminate skipped: no eval sets
    kept = {r["id"]: len(r["text"].split()) for step, r in _records(out) if step == "pii"}
    # FineWeb's filters, counting words as datatrove does, keep ~9% of these READMEs and docstrings (datatrove's
    # own filters keep the same ones, tests/data_pipeline/test_datatrove_agreement.py): markup and code make
    # fewer than 80% of their tokens words with a letter.
    assert len(kept) >= 0.05 * len(corpus), f"only {len(kept)} of {len(corpus)} documents kept"
    ratios = [kept[doc_id] / words_in[doc_id] for doc_id in kept]
    mean = sum(ratios) / len(ratios)
    assert mean >= 0.90, f"kept documents keep {mean:.1%} of their words on average"


def test_every_exclusion_record_has_rule_value_and_threshold(real_run):
    _, out = real_run
    records = list(_records(out / "excluded"))
    assert len(records) >= 10
    for step, record in records:
        assert record["excluded_reason"], record["id"]
        assert record.get("excluded_value") is not None and record.get("excluded_threshold") is not None, (step, record)
    heuristics = [r for step, r in records if step == "heuristics"]
    assert heuristics and all(":" in r["excluded_reason"] for r in heuristics)  # <family>:<rule>


def test_fineweb_order_keeps_whole_documents_where_the_old_c4_first_order_kept_fragments(corpus):
    documents = [Document(doc_id, text) for doc_id, text in corpus]
    words = {doc_id: len(text.split()) for doc_id, text in corpus}

    def kept_share(kept):  # mean share of its words a kept document still has
        return sum(len(d.text.split()) / words[d.id] for d in kept) / len(kept)

    fineweb = Heuristics()(documents)
    c4_first = Heuristics(  # as configs/pipeline/c4_first.yaml: the kept lines written as C4 writes them
        order=["c4", "gopher_quality", "gopher_repetition", "fineweb"],
        c4={"remove_no_terminal_punct_lines": True, "rewrite": "datatrove"},
    )(documents)
    assert kept_share(fineweb) >= 0.9 and kept_share(c4_first) < 0.5
    assert sum(len(d.text.split()) for d in fineweb) >= 2 * sum(len(d.text.split()) for d in c4_first)


def test_report_separates_wall_and_cpu_time_and_counts_words_and_rules(real_run):
    _, out = real_run
    report = (out / "report.md").read_text()
    assert "wall" in report and "CPU" in report and "task time" in report
    assert "words in" in report and "tokens" in report
    run = json.loads((out / "report.json").read_text())["run"]
    assert 0 < run["wall_s"] and 0 < run["cpu_s"] and run["words_out"] < run["words_in"] and run["tokens"] > 0
    exclusions = json.loads((out / "report.json").read_text())["exclusions"]
    heuristic_rules = [row for row in exclusions if row["step"] == "heuristics"]
    assert heuristic_rules and all(row["documents"] > 0 and row["words"] > 0 for row in heuristic_rules)
    for row in heuristic_rules:
        assert row["threshold"] is not None
        assert (out / row["histogram"]).stat().st_size > 1000, row
        assert f"| heuristics | {row['rule']} | {row['documents']:,} |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert all(s["cpu_s"] > 0 and s["wall_s"] is not None for s in summary.values())


def test_report_went_to_offline_wandb_with_per_step_figures(real_run):
    from wandb_records import history_and_summary

    _, out = real_run
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "wandb=true with no API key logs offline"
    history, summary = history_and_summary(runs[0])
    steps = list(json.loads((out / "summary.json").read_text()))
    per_step = [row for row in history if "pipeline/docs_out" in row]
    assert [row["pipeline/step_index"] for row in per_step] == list(range(len(steps)))
    assert per_step[0]["pipeline/docs_out"] >= per_step[-1]["pipeline/docs_out"] > 0
    assert summary["heuristics/docs_out"] == per_step[steps.index("heuristics")]["pipeline/docs_out"]
    assert summary["run/words_in"] > summary["run/words_out"] > 0 and summary["run/cpu_s"] > 0
    assert any(key.startswith("excluded/heuristics/") for key in summary)
