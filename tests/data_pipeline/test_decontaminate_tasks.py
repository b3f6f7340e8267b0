"""Decontamination against the evaluator's tasks (data_pipeline/steps/decontaminate.py): documents of a task planted
in real text are removed and counted per task, and the shards carry the record (fingerprint, n-gram size, documents
removed) that evaluations of a run on them read; an unknown task name is refused before anything runs."""

from __future__ import annotations

import json

import pytest
from planted_tasks import NGRAM, PLANTED, run_pipeline, write_planted_corpus

from data_pipeline.cli import main
from data_pipeline.formats import PackedDataset
from data_pipeline.shards import read_records
from evaluation.contamination import task_fingerprint, task_texts
from evaluation.tasks import load_tasks


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_planted_corpus(tmp_path_factory.mktemp("planted"))


def test_planted_task_documents_are_removed_and_counted_per_task_and_the_shards_carry_the_record(planted, tmp_path):
    corpus, tasks, planted_ids = planted
    tokens = run_pipeline(corpus, tmp_path / "out", tasks, sorted(PLANTED))

    excluded = [
        record
        for path in sorted((tmp_path / "out" / "excluded" / "decontaminate").glob("*.jsonl.zst"))
        for record in read_records(path)
    ]
    assert sorted(r["id"] for r in excluded) == sorted(i for ids in planted_ids.values() for i in ids)
    for record in excluded:  # each removed document names the task it was planted with
        assert record["excluded_eval_sets"] == [t for t, ids in planted_ids.items() if record["id"] in ids]
    stats = json.loads((tmp_path / "out" / "stats" / "decontaminate.json").read_text())
    assert {k: v for k, v in stats["counters"].items() if k.startswith("contaminated_by.")} == {
        f"contaminated_by.{task}": count for task, count in PLANTED.items()
    }

    dataset = PackedDataset(tokens)
    record = dataset.decontamination
    assert all(shard.header["decontamination"] == record for shard in dataset.shards), "the same record per shard"
    by_name = {t.name: t for t in load_tasks(sorted(PLANTED), [tasks])}
    assert record["ngram"] == NGRAM
    assert record["tasks"] == {
        name: {
            "fingerprint": task_fingerprint(by_name[name]),
            "version": "Yaml",
            "ngram": NGRAM,
            "documents_removed": PLANTED[name],
        }
        for name in PLANTED
    }


def test_shards_decontaminated_against_nothing_carry_no_record(planted, tmp_path):
    corpus, _, _ = planted
    assert PackedDataset(run_pipeline(corpus, tmp_path / "out", None, [])).decontamination is None


def test_the_fingerprint_is_the_rendered_content(planted, tmp_path):
    """Rendered as the evaluator shows it (prompt, delimiter, answer); one edited document or a moved data file:
    another fingerprint / the same."""
    _, tasks, _ = planted
    cloze = load_tasks(["lic_cloze"], [tasks])[0]
    doc = cloze.docs[0]
    assert task_texts(cloze)[: len(doc["choices"])] == [f"{doc['context']} {c}" for c in doc["choices"]]
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "data.jsonl").write_text((tasks / "cloze.jsonl").read_text())
    yaml = (tasks / "lic_cloze.yaml").read_text().replace(str(tasks / "cloze.jsonl"), str(moved / "data.jsonl"))
    (moved / "lic_cloze.yaml").write_text(yaml)
    assert task_fingerprint(load_tasks(["lic_cloze"], [moved])[0]) == task_fingerprint(cloze)
    rows = (moved / "data.jsonl").read_text().splitlines()
    edited = json.loads(rows[5])
    edited["context"] = edited["context"].replace(" ", "  ", 1) + " indeed"
    (moved / "data.jsonl").write_text("\n".join(rows[:5] + [json.dumps(edited)] + rows[6:]) + "\n")
    assert task_fingerprint(load_tasks(["lic_cloze"], [moved])[0]) != task_fingerprint(cloze)


def test_an_unknown_task_is_refused_before_anything_runs_naming_the_key_and_the_task(planted, tmp_path, capsys):
    corpus, tasks, _ = planted
    output = tmp_path / "out"
    code = main(
        [
            "run",
            f"input={corpus}",
            f"output={output}",
            "decontaminate_tasks=[lic_cloze,lic_clozee]",
            f"decontaminate_task_dirs=[{tasks}]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "decontaminate.tasks: task 'lic_clozee'" in err and "did you mean ['lic_cloze'" in err, err
    assert not output.exists(), "nothing ran"
    code = main(["run", f"input={corpus}", f"output={output}", "decontaminate_tasks=[lic_cloze]"])
    assert code == 1 and "decontaminate.task_dirs is empty" in capsys.readouterr().err


def test_a_resume_after_the_task_changed_is_refused(planted, tmp_path):
    """An earlier task of the run recorded one version of the task; a later task sees another: refused."""
    from data_pipeline.steps import TaskContext, build_step

    _, tasks, _ = planted
    copied = tmp_path / "tasks"
    copied.mkdir()
    for path in tasks.iterdir():
        (copied / path.name).write_text(path.read_text().replace(str(tasks), str(copied)))
    params = {"tasks": ["lic_cloze"], "task_dirs": [str(copied)]}
    context = TaskContext(step_name="decontaminate", work_dir=tmp_path / "work")
    first = build_step("decontaminate", params).bind(context)
    assert list(first.run(iter([]))) == []  # the first task records the tasks
    assert list(build_step("decontaminate", params).bind(context).run(iter([]))) == []  # same tasks: runs
    rows = (copied / "cloze.jsonl").read_text().splitlines()
    (copied / "cloze.jsonl").write_text("\n".join(rows[1:]) + "\n")
    with pytest.raises(ValueError, match="changed since this run recorded them"):
        list(build_step("decontaminate", params).bind(context).run(iter([])))
