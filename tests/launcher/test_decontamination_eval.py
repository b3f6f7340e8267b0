"""A run carries what its data was decontaminated against, and its evaluations say so per task: end to end from
real text with task documents planted in it (tests/data_pipeline/planted_tasks.py) through the pipeline, a tiny
training run with the tasks evaluated in the loop, and the offline command on its checkpoint.

  decontaminated   the shards were decontaminated against this version of the task
  unchecked        not against it (or the data carries no record at all)
  other_version    against a task of that name with other content (one document edited since)
"""

from __future__ import annotations

import json
import subprocess

import pytest
from eval_corpus import TASKS, eval_overrides, eval_records
from launcher_testing import PYTHON, REPO, child_env, launch

from tests.data_pipeline.planted_tasks import PLANTED, run_pipeline, write_planted_corpus

DECONTAMINATED_AGAINST = sorted(PLANTED)  # lic_cloze, lic_complete; lic_ppl is evaluated but never decontaminated


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_planted_corpus(tmp_path_factory.mktemp("planted"))


def _train(tokens, tasks, tmp_path):
    launch(eval_overrides(tokens, tasks, tmp_path / "run", "eval.save_results=true"), 1, tmp_path)
    return tmp_path / "run"


def _statuses(record: dict) -> dict[str, str]:
    return {key.split("/")[1]: value for key, value in record.items() if key.endswith("/decontamination")}


def test_a_run_on_decontaminated_data_marks_its_tasks_and_an_edited_task_as_another_version(planted, tmp_path):
    corpus, tasks, _ = planted
    tokens = run_pipeline(corpus, tmp_path / "data", tasks, DECONTAMINATED_AGAINST)
    run = _train(tokens, tasks, tmp_path)

    carried = json.loads((run / "decontamination.json").read_text())
    assert {name: entry["documents_removed"] for name, entry in carried["tasks"].items()} == PLANTED
    checkpoint = run / "checkpoints" / "step_00000002"
    assert json.loads((checkpoint / "train_state.json").read_text())["data_decontamination"] == carried

    expected = {"lic_cloze": "decontaminated", "lic_complete": "decontaminated", "lic_ppl": "unchecked"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for step, values in eval_records(run, scores_only=False).items():
        assert _statuses(values) == expected, step
        assert {t: values[f"eval/{t}/decontaminated"] for t in TASKS} == {
            t: float(s == "decontaminated") for t, s in expected.items()
        }
    assert all("eval/lic_cloze/decontaminated" in r for r in records)
    saved = json.loads((run / "eval" / "step_2" / "results.json").read_text())
    assert {t: e["status"] for t, e in saved["decontamination"].items()} == expected
    assert saved["decontamination"]["lic_cloze"]["documents_removed"] == PLANTED["lic_cloze"]

    # the offline command on the checkpoint, with one document of lic_cloze edited since the data was cleaned
    edited_tasks = tmp_path / "edited_tasks"
    edited_tasks.mkdir()
    for path in tasks.iterdir():
        (edited_tasks / path.name).write_text(path.read_text().replace(str(tasks), str(edited_tasks)))
    rows = (edited_tasks / "cloze.jsonl").read_text().splitlines()
    doc = json.loads(rows[3])
    doc["context"] = "Indeed, " + doc["context"]
    (edited_tasks / "cloze.jsonl").write_text("\n".join(rows[:3] + [json.dumps(doc)] + rows[4:]) + "\n")
    out = tmp_path / "offline"
    result = subprocess.run(
        [PYTHON, "-m", "launcher.evaluate", str(run), f"eval.tasks=[{','.join(TASKS)}]"]
        + [f"eval.task_dirs=[{edited_tasks}]", f"eval.output={out}", "eval.max_length=32", "eval.batch_size=4"]
        + ["eval.bootstrap_iters=0", "eval.device=cpu"],
        cwd=REPO,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    offline = json.loads((out / "results.json").read_text())["decontamination"]
    assert {t: e["status"] for t, e in offline.items()} == {**expected, "lic_cloze": "other_version"}
    assert offline["lic_cloze"]["recorded_fingerprint"] == carried["tasks"]["lic_cloze"]["fingerprint"]
    assert offline["lic_cloze"]["fingerprint"] != offline["lic_cloze"]["recorded_fingerprint"]
    table = (out / "results.md").read_text()
    assert "| Decontamination |" in table.splitlines()[0]
    assert any(
        line.startswith("| lic_cloze | acc |") and line.endswith("| other_version |") for line in table.splitlines()
    )
    assert "| lic_complete | exact_match |" in table and "decontaminated |" in table


def test_a_run_on_data_decontaminated_against_nothing_marks_every_task_unchecked(planted, tmp_path):
    corpus, tasks, _ = planted
    run = _train(run_pipeline(corpus, tmp_path / "data", None, []), tasks, tmp_path)
    assert json.loads((run / "decontamination.json").read_text()) is None
    for step, values in eval_records(run, scores_only=False).items():
        assert _statuses(values) == dict.fromkeys(TASKS, "unchecked"), step
        assert all(values[f"eval/{t}/decontaminated"] == 0.0 for t in TASKS)


def test_a_model_without_a_training_record_is_unchecked(tmp_path):
    """A Hugging Face directory (or anything that is no Loom checkpoint) carries no record."""
    from launcher.evaluation import training_decontamination

    (tmp_path / "config.json").write_text("{}")
    assert training_decontamination(tmp_path) is None
