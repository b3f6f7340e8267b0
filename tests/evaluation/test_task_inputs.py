"""Each bad task input is refused while the tasks load (before any request is scored), naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from task_fixtures import cloze_docs, write_task_dir

from evaluation.errors import TaskInputError
from evaluation.tasks import load_tasks


def _task_yaml(directory: Path, name: str, data_file: Path, **fields: str) -> Path:
    lines = [
        f"task: {name}",
        "output_type: multiple_choice",
        "dataset_path: json",
        f"dataset_kwargs:\n  data_files:\n    test: {data_file}",
        "test_split: test",
    ]
    defaults = {"doc_to_text": "'{{context}}'", "doc_to_choice": "choices", "doc_to_target": "label"}
    lines += [f"{k}: {v}" for k, v in {**defaults, **fields}.items()]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_data_file_names_the_yaml_and_the_file(tmp_path):
    missing = tmp_path / "no_such_split.jsonl"
    yaml_path = _task_yaml(tmp_path, "lost", missing)
    with pytest.raises(TaskInputError) as err:
        load_tasks(["lost"], [tmp_path])
    message = str(err.value)
    assert str(yaml_path) in message and "data_files" in message and str(missing) in message


def test_unknown_task_name_names_the_task_dirs_and_close_names(tmp_path):
    task_dir = write_task_dir(tmp_path)
    with pytest.raises(TaskInputError) as err:
        load_tasks(["cloze_gpl3"], [task_dir])
    message = str(err.value)
    assert "'cloze_gpl3'" in message and str(task_dir) in message and "cloze_gpl" in message


def test_template_field_missing_from_the_data_names_yaml_field_and_file(tmp_path):
    data = _jsonl(tmp_path / "cloze.jsonl", cloze_docs("GPL-3", 6, seed=0))
    yaml_path = _task_yaml(tmp_path, "asks_for_question", data, doc_to_text="'Q: {{question}}'")
    with pytest.raises(TaskInputError) as err:
        load_tasks(["asks_for_question"], [tmp_path])
    message = str(err.value)
    assert str(yaml_path) in message and "doc_to_text" in message and "'question'" in message
    assert str(data) in message and "document 0" in message


def test_field_missing_from_one_document_names_that_document(tmp_path):
    rows = cloze_docs("GPL-3", 6, seed=0)
    del rows[4]["context"]
    data = _jsonl(tmp_path / "cloze.jsonl", rows)
    yaml_path = _task_yaml(tmp_path, "one_short", data)
    with pytest.raises(TaskInputError) as err:
        load_tasks(["one_short"], [tmp_path])
    message = str(err.value)
    assert str(yaml_path) in message and "'context'" in message and "document 4" in message and str(data) in message


def test_empty_choice_list_names_yaml_document_and_field(tmp_path):
    rows = cloze_docs("GPL-3", 6, seed=0)
    rows[2]["choices"] = []
    data = _jsonl(tmp_path / "cloze.jsonl", rows)
    yaml_path = _task_yaml(tmp_path, "no_choices", data)
    with pytest.raises(TaskInputError) as err:
        load_tasks(["no_choices"], [tmp_path])
    message = str(err.value)
    assert str(yaml_path) in message and "doc_to_choice" in message and "document 2" in message
    assert str(data) in message


def test_unknown_metric_and_sampling_generation_are_refused(tmp_path):
    data = _jsonl(tmp_path / "cloze.jsonl", cloze_docs("GPL-3", 4, seed=0))
    yaml_path = _task_yaml(tmp_path, "odd_metric", data, metric_list="\n  - metric: accuracy_at_5")
    with pytest.raises(TaskInputError, match="accuracy_at_5") as err:
        load_tasks(["odd_metric"], [tmp_path])
    assert str(yaml_path) in str(err.value)
    yaml_path.unlink()
    _task_yaml(
        tmp_path,
        "sampled",
        data,
        output_type="generate_until",
        generation_kwargs="\n  until: ['.']\n  do_sample: true\n  temperature: 0.7",
    )
    with pytest.raises(TaskInputError, match="greedy"):
        load_tasks(["sampled"], [tmp_path])


def test_network_dataset_is_refused(tmp_path):
    path = tmp_path / "hub.yaml"
    path.write_text("task: hub\ndataset_path: EleutherAI/lambada_openai\ntest_split: test\ndoc_to_text: x\n")
    with pytest.raises(TaskInputError, match="never downloads") as err:
        load_tasks(["hub"], [tmp_path])
    assert str(path) in str(err.value)


def test_function_tag_resolves_beside_the_yaml_and_a_missing_module_is_named(tmp_path):
    data = _jsonl(tmp_path / "cloze.jsonl", cloze_docs("GPL-3", 4, seed=0))
    (tmp_path / "prompts.py").write_text("def as_question(doc):\n    return 'Q: ' + doc['context'] + '?'\n")
    _task_yaml(tmp_path, "with_function", data, doc_to_text="!function prompts.as_question")
    (task,) = load_tasks(["with_function"], [tmp_path])
    assert task.context(task.docs[0], task.make_sampler()) == f"Q: {task.docs[0]['context']}?"
    _task_yaml(tmp_path, "with_function", data, doc_to_text="!function missing_module.as_question")
    with pytest.raises(TaskInputError, match="missing_module.py"):
        load_tasks(["with_function"], [tmp_path])
