"""The command line: a whole pipeline with its report, one step with its own parameters, the classifier
trainer, and clear errors for bad configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.cli import build_plan, compose_config, main
from data_pipeline.synthetic import generate_corpus, write_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = generate_corpus(n_clean=80, n_exact_dups=5, n_near_dups=8, n_junk=12, n_contaminated=4, seed=7)
    return write_corpus(corpus, root / "source")


def test_run_subprocess_writes_outputs_and_report(small_corpus, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline",
            "run",
            "pipeline=clean",
            f"input={small_corpus['corpus']}",
            f"output={out}",
            f"eval_sets=[{small_corpus['eval']}]",
            "tasks=2",
            "workers=2",
            "wandb=true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(tmp_path),
            "WANDB_CACHE_DIR": str(tmp_path / "wc"),
            "WANDB_CONFIG_DIR": str(tmp_path / "wcfg"),
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # Documents are written where a later step reads them from disk (heuristics: exact dedup's barrier reads it,
    # compressed) and at the end; the other steps stream (data_pipeline/executors/streams.py) but record what they
    # excluded.
    assert len(list((out / "heuristics").glob("shard-*.jsonl.zst"))) == 2
    assert len(list((out / "decontaminate").glob("shard-*.jsonl"))) == 2
    for step in ("normalize", "exact_dedup", "minhash_dedup", "boilerplate_dedup", "pii"):
        assert not (out / step).exists() and len(list((out / "excluded" / step).glob("shard-*.jsonl.zst"))) == 2
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    # Of the 5 planted exact duplicates, the upper-case copies go first, at Gopher's stop-word rule (FineWeb's order)
    duplicates = summary["exact_dedup"]["docs_excluded"]
    assert 1 <= duplicates < 5 and f"| exact_dedup | exact_dedup:duplicate | {duplicates} |" in report
    assert "| decontaminate | decontaminate:contaminated | 4 |" in report
    assert (out / "funnel.png").stat().st_size > 1000 and (out / "report.html").exists()
    assert list(out.glob("hist_minhash_dedup_*.png"))
    assert summary["normalize"]["docs_in"] == 80 + 5 + 8 + 12 + 4
    assert all(s["bytes_in"] > 0 and s["time_s"] >= 0 for s in summary.values())
    assert set(summary["exact_dedup"]["stage_time_s"]) == {"hash", "select"}  # earlier stages are timed too
    assert list((out / "wandb").glob("offline-run-*"))  # the report was also logged to (offline) wandb


def test_single_step_takes_step_params(small_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "heuristics",
                f"input={small_corpus['corpus']}",
                f"output={out}",
                "tasks=1",
                "+step_params.gopher_quality.min_words=100000",
            ]
        )
        == 0
    )
    stats = json.loads((out / "stats" / "heuristics.json").read_text())
    assert stats["docs_out"] == 0 and stats["docs_excluded"] == stats["docs_in"]
    assert (
        main(["heuristics", f"input={small_corpus['corpus']}", f"output={tmp_path / 'o2'}", "+step_params.c4.bogus=1"])
        == 1
    )
    # As configs/pipeline.yaml documents: no `+` needed to set a step parameter.
    assert (
        main(
            [
                "heuristics",
                f"input={small_corpus['corpus']}",
                f"output={tmp_path / 'o3'}",
                "tasks=1",
                "step_params.c4.min_sentences=3",
                "step_params.order=[c4,gopher_quality]",
            ]
        )
        == 0
    )
    plan = json.loads((tmp_path / "o3" / "plan.json").read_text())
    assert plan["steps"][0]["params"] == {"c4": {"min_sentences": 3}, "order": ["c4", "gopher_quality"]}
    cfg = compose_config(
        [f"input={small_corpus['corpus']}", f"output={tmp_path}", "pipeline.steps.1.params.c4.min_sentences=3"]
    )
    assert cfg.pipeline.steps[1].name == "heuristics" and cfg.pipeline.steps[1].params.c4.min_sentences == 3
    # Resuming into the same output with another configuration would skip work silently: refused.
    capsys.readouterr()
    assert main(["heuristics", f"input={small_corpus['corpus']}", f"output={out}", "tasks=1"]) == 1
    assert "different configuration" in capsys.readouterr().err


def test_default_pipeline_composes_with_literature_defaults(small_corpus, tmp_path):
    cfg = compose_config([f"input={small_corpus['corpus']}", f"output={tmp_path}"])
    assert [s.name for s in cfg.pipeline.steps] == [  # FineWeb's order: the quality filters before the dedup steps
        "normalize",
        "heuristics",
        "exact_dedup",
        "minhash_dedup",
        "boilerplate_dedup",
        "pii",
        "decontaminate",
        "tokenize",
    ]
    plan, skipped = build_plan(cfg)
    assert skipped == ["decontaminate"]  # no eval sets given
    cfg = compose_config(
        [f"input={small_corpus['corpus']}", f"output={tmp_path}", f"eval_sets=[{small_corpus['eval']}]"]
    )
    assert [s.name for s in build_plan(cfg)[0].steps][-2:] == ["decontaminate", "tokenize"]


def test_bad_configuration_fails_early_with_the_key(small_corpus, tmp_path, capsys):
    assert main(["run", f"output={tmp_path}"]) == 1
    assert "input=" in capsys.readouterr().err
    assert main(["run", f"input={small_corpus['corpus']}", f"output={tmp_path}", "output_format=csv"]) == 1
    assert "output_format" in capsys.readouterr().err
    assert main(["nonsense"]) == 2
    with pytest.raises(Exception, match="workerz"):
        compose_config([f"input={small_corpus['corpus']}", f"output={tmp_path}", "workerz=2"])


def test_train_classifier_command(tmp_path, capsys):
    from data_pipeline.synthetic import generate_clean_documents

    texts = generate_clean_documents(40, seed=4)
    (tmp_path / "pos.txt").write_text("\n".join(t.replace("\n", " ") for t in texts[:20]) + "\n")
    (tmp_path / "neg.txt").write_text("\n".join(t.replace("\n", " ")[::-1] for t in texts[20:]) + "\n")
    assert (
        main(
            [
                "train-classifier",
                f"positive={tmp_path / 'pos.txt'}",
                f"negative={tmp_path / 'neg.txt'}",
                f"output={tmp_path / 'q.bin'}",
                "epoch=5",
                "quantize=false",
                "bucket=20000",
                "holdout=0.2",
            ]
        )
        == 0
    )
    assert (tmp_path / "q.bin").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "held-out (8): precision" in printed and "recall" in printed
    assert (
        main(
            [
                "train-classifier",
                f"positive={tmp_path / 'pos.txt'}",
                f"negative={tmp_path / 'neg.txt'}",
                f"output={tmp_path / 'q.bin'}",
                "quantize=maybe",
            ]
        )
        == 1
    )
    assert main(["train-classifier", f"positive={tmp_path / 'pos.txt'}"]) == 1


def test_mix_step_across_shards_reports_realised_proportions(tmp_path):
    from data_pipeline.synthetic import generate_clean_documents

    texts = generate_clean_documents(120, seed=12)
    src = tmp_path / "sources.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"{s}{i}", "text": t, "source": s}) + "\n"
            for i, t in enumerate(texts)
            for s in (["web"] if i < 90 else ["books"])
        )
    )
    words = {"web": sum(len(t.split()) for t in texts[:90]), "books": sum(len(t.split()) for t in texts[90:])}
    budget = 2 * words["books"] + words["web"] // 2  # books upsampled 2x, web halved -> shares 2/3 and 1/3-ish
    weights = {"books": 2 * words["books"] / budget, "web": (words["web"] // 2) / budget}
    outputs = []
    for tasks in (1, 3):
        out = tmp_path / f"out{tasks}"
        assert (
            main(
                [
                    "mix",
                    f"input={src}",
                    f"output={out}",
                    f"tasks={tasks}",
                    f"+step_params.target_tokens={budget}",
                    f"+step_params.weights={{books: {weights['books']}, web: {weights['web']}}}",
                ]
            )
            == 0
        )
        stats = json.loads((out / "stats" / "mix.json").read_text())
        assert stats["docs_kept"] + stats["docs_excluded"] == stats["docs_in"] == 120
        assert stats["docs_out"] == stats["docs_kept"] + stats["docs_added"] and stats["docs_added"] == 30
        realised = {k.split(".")[1]: v for k, v in stats["counters"].items() if k.startswith("mix_tokens.")}
        assert realised["books"] == 2 * words["books"]
        assert abs(realised["web"] / (words["web"] / 2) - 1) < 0.2
        assert "realised mix" in (out / "report.md").read_text()
        outputs.append(
            sorted(
                json.loads(line)["id"]
                for p in sorted((out / "mix").glob("*.jsonl"))
                for line in p.read_text().splitlines()
            )
        )
    assert outputs[0] == outputs[1]  # the sample depends on the seed and ids, not on the sharding
