"""Bad input is visible: the console summary at the end names the quarantined rows per reason and per file, a
run fails when more than `max_quarantine_fraction` of what it read is bad (off by default), and the report
counts quarantined rows in documents, words and bytes."""

from __future__ import annotations

import json

from data_pipeline.cli import main
from data_pipeline.synthetic import generate_clean_documents


def write_inputs(root):
    """Two JSONL files of real-looking documents, 30% of their lines broken JSON (and one empty document)."""
    root.mkdir()
    texts = generate_clean_documents(40, seed=5)
    for name, part in (("a.jsonl", texts[:20]), ("b.jsonl", texts[20:])):
        lines = []
        for i, text in enumerate(part):
            record = json.dumps({"id": f"{name}-{i}", "text": text})
            lines.append(record[:-7] if i % 10 < 3 else record)  # 3 in 10 lines cut short: invalid JSON
        if name == "b.jsonl":
            lines.append(json.dumps({"id": "empty", "text": "   "}))
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def run(tmp_path, name, *extra):
    return main(["normalize", f"input={tmp_path / 'in'}", f"output={tmp_path / name}", "tasks=2", *extra])


def test_quarantine_is_summarised_per_reason_and_file_and_counted_in_every_unit(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert run(tmp_path, "out") == 0
    console = capsys.readouterr().out
    assert "quarantine: 13 of the 41 rows read (31.7%) were not valid documents" in console
    assert "  invalid_json: 12 (a.jsonl 6, b.jsonl 6)" in console
    assert "  empty_document: 1 (b.jsonl 1)" in console
    report = json.loads((tmp_path / "out" / "report.json").read_text())["run"]
    quarantine = [
        json.loads(line)
        for p in (tmp_path / "out" / "quarantine" / "normalize").glob("*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert report["docs_quarantined"] == len(quarantine) == 13
    raw_words = sum(len(r["raw"].split()) for r in quarantine)  # previews are whole rows here (short lines)
    raw_bytes = sum(len(r["raw"].encode()) for r in quarantine)
    assert (report["words_quarantined"], report["bytes_quarantined"]) == (raw_words, raw_bytes) and raw_words > 0
    assert report["words_in"] > report["words_quarantined"] and report["bytes_in"] > report["bytes_quarantined"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert (
        f"**Quarantined** (rows that were not valid documents, quarantine/normalize/): 13 documents (31.7%), "
        f"{raw_words:,} words" in md
    )


def test_max_quarantine_fraction_fails_the_run_naming_reasons_and_files(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    assert run(tmp_path, "strict", "max_quarantine_fraction=0.2") == 1
    error = capsys.readouterr().err
    assert "max_quarantine_fraction=0.2: 31.7% of the input was quarantined" in error
    assert "invalid_json: 12 (a.jsonl 6, b.jsonl 6)" in error
    assert run(tmp_path, "lenient", "max_quarantine_fraction=0.5") == 0
    assert run(tmp_path, "bad", "max_quarantine_fraction=5") == 1
    assert "max_quarantine_fraction=5" in capsys.readouterr().err


def test_a_task_after_the_reading_step_refuses_to_run_over_the_limit(tmp_path):
    """What stops a Slurm chain: the first task of the second step reads the first step's stats."""
    import pytest

    from data_pipeline.executors.base import PipelinePlan, StepSpec, run_task
    from data_pipeline.quarantine import QuarantineExceeded
    from data_pipeline.readers import InputSpec

    write_inputs(tmp_path / "in")
    plan = PipelinePlan(
        input=InputSpec(str(tmp_path / "in")),
        output=str(tmp_path / "out"),
        steps=[StepSpec("normalize"), StepSpec("exact_dedup")],
        tasks=2,
        max_quarantine_fraction=0.2,
    )
    assert run_task(plan, 0, 0, 0) and run_task(plan, 0, 0, 1)
    with pytest.raises(QuarantineExceeded, match="31.7% of the input was quarantined"):
        run_task(plan, 1, 0, 0)
    assert not (tmp_path / "out" / ".markers" / "exact_dedup").exists()
