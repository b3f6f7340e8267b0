"""What an evaluation task is made of, for decontaminating training data against it, and whether a run's data was.

`task_texts(task)` is the text the model is evaluated on, as the evaluator itself renders it: for every document
of the evaluated split (and of the few-shot pool when the task shows few-shot examples), in document order, its
prompt (doc_to_text) joined by the target delimiter to each choice (doc_to_choice), or to its target (doc_to_target,
each text of a list of targets), or the prompt alone (a target that is a choice index); so an n-gram that spans the
prompt and the answer counts. The task's description (an instruction shared by every document) is left out: it
would remove any training document that quotes the instruction. The data pipeline's decontaminate step builds its
n-grams from these texts, so what it removes is what the evaluation would have measured.

`task_fingerprint(task)` identifies a task's content: SHA-256 of the canonical JSON (sorted keys, UTF-8) of
{"definition": FINGERPRINT_VERSION, "config": the keys of the task config that shape its texts (TEXT_KEYS, callables
by name), "texts": task_texts(task)}. Moving the data files does not change it; editing one document, a template,
the split or the few-shot count does.

A training run carries the record its data was decontaminated with (`{"ngram": n, "tasks": {name: {"fingerprint",
"ngram", "documents_removed"}}}`, written by the pipeline into every shard header). `decontamination_status` says,
per evaluated task: decontaminated (the record holds the task with this fingerprint), other_version (the record holds
the task name with another fingerprint: the data was decontaminated against another version of it) or unchecked (no
record, or the task is not in it).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from evaluation.task import Task

FINGERPRINT_VERSION = "loom-task-content-v1"
# Task config keys that change the rendered texts (or which documents are rendered); data paths do not.
TEXT_KEYS = (
    "task",
    "output_type",
    "test_split",
    "validation_split",
    "fewshot_split",
    "process_docs",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "gen_prefix",
    "target_delimiter",
    "fewshot_delimiter",
    "num_fewshot",
    "fewshot_config",
)
DECONTAMINATED, UNCHECKED, OTHER_VERSION = "decontaminated", "unchecked", "other_version"
STATUSES = (DECONTAMINATED, UNCHECKED, OTHER_VERSION)


def _texts_of(task: Task, doc: dict, fewshot: bool) -> list[str]:
    """The document's prompt joined to each of its continuations as the model reads them (prompt, target
    delimiter, choice or target): one text per choice, or one per target text, or the prompt alone."""
    fs = task.fewshot
    prompt = task.doc_to_text(doc, fs.doc_to_text if fewshot else None)
    prompt = prompt if isinstance(prompt, str) else ""
    delimiter = fs.target_delimiter if fewshot else task.target_delimiter
    choice_spec = fs.doc_to_choice if fewshot else task.config.get("doc_to_choice")
    if choice_spec is not None:
        return [f"{prompt}{delimiter}{choice}" for choice in task.doc_to_choice(doc, choice_spec)]
    target = task.doc_to_target(doc, fs.doc_to_target if fewshot else None)
    targets = [target] if isinstance(target, str) else [t for t in target if isinstance(t, str)]
    if not isinstance(target, (str, list)) or not targets:
        return [prompt]
    return [f"{prompt}{delimiter}{t}" for t in targets]


def task_texts(task: Task) -> list[str]:
    """The task's rendered texts in a canonical order (see module docstring)."""
    texts = [t for doc in task.docs for t in _texts_of(task, doc, fewshot=False)]
    if task.num_fewshot > 0:
        texts += [t for doc in task.fewshot_pool for t in _texts_of(task, doc, fewshot=True)]
    return texts


def _plain(value: Any) -> Any:
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__name__', str(value))}"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def task_fingerprint(task: Task) -> str:
    """SHA-256 (hex) of the task's content (see module docstring for the definition)."""
    config = {key: _plain(task.config[key]) for key in TEXT_KEYS if task.config.get(key) is not None}
    payload = {"definition": FINGERPRINT_VERSION, "config": config, "texts": task_texts(task)}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def decontamination_status(name: str, fingerprint: str, record: dict | None) -> dict[str, Any]:
    """{"status", "fingerprint", and what the record says of the task: "recorded_fingerprint", "ngram",
    "documents_removed"} for one evaluated task against a run's decontamination record (None: the run has none)."""
    entry = ((record or {}).get("tasks") or {}).get(name)
    out: dict[str, Any] = {"fingerprint": fingerprint}
    if not isinstance(entry, dict):
        return {"status": UNCHECKED, **out}
    status = DECONTAMINATED if entry.get("fingerprint") == fingerprint else OTHER_VERSION
    return {
        "status": status,
        **out,
        "recorded_fingerprint": entry.get("fingerprint"),
        "ngram": entry.get("ngram"),
        "documents_removed": entry.get("documents_removed"),
    }


def leaf_tasks(items: list) -> list[Task]:
    """The tasks of a list of tasks and groups (a group gives its leaf tasks), each once, in order."""
    from evaluation.tasks import Group

    out, seen = [], set()
    for item in items:
        for task in item.leaf_tasks() if isinstance(item, Group) else [item]:
            if task.name not in seen:
                seen.add(task.name)
                out.append(task)
    return out


def task_statuses(tasks: list[Task], record: dict | None) -> dict[str, dict[str, Any]]:
    """decontamination_status of every task (leaf tasks of groups included), by task name."""
    return {task.name: decontamination_status(task.name, task_fingerprint(task), record) for task in tasks}
