"""A training corpus of real text with evaluation-task documents planted in it, run through decontaminate + tokenize.

The corpus is the docstrings of Python's standard library (real_text.py: text nobody here wrote); the tasks are the
licence tasks of tests/launcher/eval_corpus.py (a cloze over MPL-2.0 sentences, a perplexity task over MPL-2.0
paragraphs, a completion task over GPL-2 sentences). Planted: PLANTED[task] corpus documents get one of that task's
documents, as the task shows it to the model (prompt, space, answer), pasted into their middle.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.data_pipeline.real_text import stdlib_docstrings
from tests.launcher.eval_corpus import VOCAB, write_tasks

PLANTED = {"lic_cloze": 3, "lic_complete": 2}  # documents planted per task (the pipeline must count exactly these)
N_DOCUMENTS = 100
NGRAM = 13


def _task_documents(tasks: Path, task: str) -> list[str]:
    """The task's documents as text the model reads (prompt + " " + answer) that have an n-gram to match."""
    data = {"lic_cloze": "cloze.jsonl", "lic_complete": "complete.jsonl"}[task]
    rows = [json.loads(line) for line in (tasks / data).read_text().splitlines()]
    if task == "lic_cloze":
        texts = [f"{r['context']} {r['choices'][r['label']]}" for r in rows]
    else:
        texts = [f"Continue: {r['prompt']} {r['answer']}" for r in rows]
    return [t for t in texts if len(t.split()) >= NGRAM + 1]


def write_planted_corpus(root: Path) -> tuple[Path, Path, dict[str, list[str]]]:
    """(corpus JSONL, task directory, {task: ids of the documents planted with it})."""
    tasks = write_tasks(root / "tasks")
    documents = stdlib_docstrings(min_words=40)[:N_DOCUMENTS]
    assert len(documents) == N_DOCUMENTS, "the standard library's docstrings are the corpus"
    planted: dict[str, list[str]] = {}
    rows, cursor = [], 0
    for task, count in PLANTED.items():
        leaks = _task_documents(tasks, task)
        assert len(leaks) >= count, f"{task}: too few documents long enough to plant"
        for leak in leaks[:count]:
            cursor += 7  # spread the planted documents over the corpus (and so over its shards)
            doc_id, text = documents[cursor]
            words = text.split()
            documents[cursor] = (doc_id, " ".join(words[: len(words) // 2] + [leak] + words[len(words) // 2 :]))
            planted.setdefault(task, []).append(doc_id)
    for doc_id, text in documents:
        rows.append(json.dumps({"id": doc_id, "text": text}))
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return corpus, tasks, planted


def run_pipeline(corpus: Path, output: Path, tasks: Path | None, names: list[str]) -> Path:
    """decontaminate (against `names`; none: the step is skipped) then tokenize (a BPE of eval_corpus.VOCAB);
    returns the tokens directory."""
    from data_pipeline.executors.base import PipelinePlan, StepSpec
    from data_pipeline.executors.local import LocalExecutor
    from data_pipeline.readers import InputSpec
    from data_pipeline.steps import build_step

    steps = [StepSpec("decontaminate", {"tasks": names, "task_dirs": [str(tasks)] if tasks else []})]
    steps = [s for s in steps if build_step(s.name, s.params).enabled()]
    steps.append(StepSpec("tokenize", {"vocab_size": VOCAB, "sample_docs": 200}))
    plan = PipelinePlan(input=InputSpec(str(corpus)), output=str(output), steps=steps, tasks=2)
    LocalExecutor(plan).run()
    return output / "tokens"
