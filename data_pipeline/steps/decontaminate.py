"""Remove training documents that share a long word n-gram (default 13, as in GPT-3) with an evaluation set,
so benchmark scores measure generalisation rather than memorisation.

The evaluation text comes from files (`eval_sets`: JSONL with `text_key`, or one example per line) or from the
evaluator's own tasks (`tasks`, found in `task_dirs` as `python -m launcher.evaluate` finds them): each task's
prompts, choices and targets as the evaluator renders them (evaluation/contamination.py), so the n-grams are what
the model is evaluated on. An unknown task name is refused when the step is built, before anything runs.

A removed document is counted for every task (or file) it shares an n-gram with (`contaminated_by.<name>` in the
step's counters). Every pipeline task of the step writes what it decontaminates against (each evaluation task's
content fingerprint, the n-gram size) to the step's work directory, the same file atomically; the tokenize step of
the same run joins it with the counts into the shards' decontamination record (data_pipeline/decontamination.py).

The eval n-grams go into a Python dict once per pipeline task; eval sets are small compared with the corpus.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

from data_pipeline.decontamination import RECORD_FILE, TASK_DIRS_KEY, TASKS_KEY, removed_counter
from data_pipeline.document import Document
from data_pipeline.steps.base import FilterStep, Verdict, reject

_WORD = re.compile(r"\w+", re.UNICODE)


def word_ngrams(text: str, n: int) -> Iterator[tuple[str, ...]]:
    """Lower-cased word n-grams (punctuation ignored), as tuples: exact matches, no hash collisions."""
    words = _WORD.findall(text.lower())
    return zip(*(words[i:] for i in range(n)))


def read_eval_texts(path: Path, text_key: str) -> Iterator[str]:
    """Eval set texts: JSONL (one object per line, `text_key` field) or plain text (one example per line)."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f):
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                try:
                    record = json.loads(line)
                    yield str(record[text_key])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"{path}:{line_no + 1}: not a JSON object with field {text_key!r} ({exc})"
                    ) from exc
            else:
                yield line


class Decontaminate(FilterStep):
    name = "decontaminate"

    def __init__(
        self,
        eval_sets: Optional[Sequence[str]] = None,
        ngram: int = 13,
        text_key: str = "text",
        tasks: Optional[Sequence[str]] = None,
        task_dirs: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        self.eval_sets = [Path(p) for p in (eval_sets or [])]
        for path in self.eval_sets:
            if not path.is_file():
                raise ValueError(f"decontaminate.eval_sets: {path} does not exist")
        if ngram < 1:
            raise ValueError(f"decontaminate.ngram={ngram}: must be positive")
        self.ngram = ngram
        self.text_key = text_key
        self.task_names = list(tasks or [])
        self.task_dirs = [str(d) for d in (task_dirs or [])]
        self.tasks = self._load_tasks()
        self._index: Optional[dict[tuple[str, ...], tuple[str, ...]]] = None

    def _load_tasks(self) -> list:
        """The evaluator's tasks (groups and tags give their leaf tasks), each checked whole; a name that is no
        task, or a task that cannot be rendered, is refused here, naming the key and the task."""
        if not self.task_names:
            return []
        if not self.task_dirs:
            raise ValueError(
                f"{TASKS_KEY}={self.task_names} but {TASK_DIRS_KEY} is empty: give the directories of the task YAML "
                "files (decontaminate_task_dirs=[...], e.g. [configs/eval_tasks])"
            )
        for directory in self.task_dirs:
            if not Path(directory).is_dir():
                raise ValueError(f"{TASK_DIRS_KEY}: {directory} is not a directory of task YAML files")
        from evaluation.contamination import leaf_tasks
        from evaluation.errors import TaskInputError
        from evaluation.tasks import load_tasks

        loaded = []
        for name in self.task_names:
            try:
                loaded += load_tasks([name], self.task_dirs)
            except TaskInputError as exc:
                message = str(exc).replace("eval.tasks: ", "").replace("eval.task_dirs", TASK_DIRS_KEY)
                raise ValueError(f"{TASKS_KEY}: task {name!r}: {message}") from None
        return leaf_tasks(loaded)

    def enabled(self) -> bool:
        return bool(self.eval_sets or self.tasks)

    def sources(self) -> Iterator[tuple[str, Iterator[str]]]:
        """(name, texts) of every file and task decontaminated against."""
        from evaluation.contamination import task_texts

        for path in self.eval_sets:
            yield path.name, read_eval_texts(path, self.text_key)
        for task in self.tasks:
            yield task.name, iter(task_texts(task))

    def record(self) -> dict:
        """What this step decontaminates against (without counts): the n-gram size, each task's fingerprint."""
        from evaluation.contamination import FINGERPRINT_VERSION, task_fingerprint

        return {
            "ngram": self.ngram,
            "fingerprint_definition": FINGERPRINT_VERSION,
            "tasks": {
                task.name: {"fingerprint": task_fingerprint(task), "version": str(task.version)} for task in self.tasks
            },
            "files": {path.name: {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()} for path in self.eval_sets},
        }

    def write_record(self) -> None:
        self.context.write_atomic(RECORD_FILE, json.dumps(self.record(), indent=1).encode("utf-8"))

    def index(self) -> dict[tuple[str, ...], tuple[str, ...]]:
        """n-gram -> the files and tasks it occurs in (in the order they are given)."""
        if self._index is None:
            index: dict[tuple[str, ...], tuple[str, ...]] = {}
            for name, texts in self.sources():
                for text in texts:
                    for gram in word_ngrams(text, self.ngram):
                        names = index.get(gram, ())
                        if name not in names:
                            index[gram] = names + (name,)
            self._index = index
        return self._index

    def check_record(self) -> None:
        """A resumed run whose tasks or files changed since an earlier task recorded them would count against one
        version and record another: refused."""
        written = self.context.work_dir / RECORD_FILE
        if written.is_file() and json.loads(written.read_text(encoding="utf-8")) != self.record():
            raise ValueError(
                f"decontaminate: the evaluation tasks or eval_sets files changed since this run recorded them in "
                f"{written}; start over in a new output directory"
            )

    def setup(self) -> None:
        self.check_record()
        self.write_record()  # every task writes the same record (atomically): no stage, no Slurm job of its own
        self.index()

    def filter(self, doc: Document) -> Verdict:
        """Drops a document sharing an n-gram with an eval set (`decontaminate:contaminated`, value the shared
        n-grams, threshold 0)."""
        index = self.index()
        shared = [g for g in word_ngrams(doc.text, self.ngram) if g in index]
        if not shared:
            return True
        hits = list(dict.fromkeys(name for g in shared for name in index[g]))
        for name in hits:
            self.context.count(removed_counter(name))
        return reject("contaminated", len(shared), 0, eval_set=hits[0], eval_sets=hits, ngram=" ".join(shared[0]))
