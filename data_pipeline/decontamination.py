"""The decontamination record of a pipeline run: what its data was decontaminated against, carried by the shards.

Every pipeline task of the decontaminate step writes (the same content) `<output>/.work/decontaminate/record.json`:
the n-gram size and, per evaluation task, the task's content fingerprint (evaluation/contamination.py) and version;
per eval-set file, its SHA-256. Its counters (`stats/decontaminate/task-*.json`) count, per task or file, the
training documents it removed for it (`contaminated_by.<name>`; a document sharing n-grams with two tasks counts
for both).

The tokenize step of the same run joins the two after the decontaminate step has finished (its `train` stage runs
after every earlier step) into the record and writes it into every shard header it writes (`decontamination`):

    {"ngram": 13, "fingerprint_definition": "...",
     "tasks": {"<task>": {"fingerprint": "<sha256>", "version": "1.0", "ngram": 13, "documents_removed": 4}},
     "files": {"<file name>": {"sha256": "...", "ngram": 13, "documents_removed": 2}}}

Shards without it (no decontaminate step in the run, or one with nothing to decontaminate against, or tokenized by
a separate run) were decontaminated against nothing as far as anyone can tell: every task evaluates as unchecked.
In the header rather than a sidecar file so the record travels with the tokens it describes: a directory of shards
from different runs keeps only what every shard says (formats.PackedDataset.decontamination).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from data_pipeline.formats import DECONTAMINATION_KINDS
from data_pipeline.stats import merge_step_dir

STEP_NAME = "decontaminate"
RECORD_FILE = "record.json"
TASKS_KEY = "decontaminate.tasks"
TASK_DIRS_KEY = "decontaminate.task_dirs"
COUNTER_PREFIX = "contaminated_by."


def removed_counter(name: str) -> str:
    """The counter of documents removed for the task or file `name`."""
    return f"{COUNTER_PREFIX}{name}"


def collect_record(run_root: Optional[Path], world_size: int) -> Optional[dict[str, Any]]:
    """The run's decontamination record (module docstring), or None when the run has no decontaminate step that
    ran (`run_root`: the pipeline's output directory; `world_size`: its number of shards, all of which the
    decontaminate step must have counted)."""
    if run_root is None:
        return None
    path = Path(run_root) / ".work" / STEP_NAME / RECORD_FILE
    stats_dir = Path(run_root) / "stats" / STEP_NAME
    if not path.is_file() or not stats_dir.is_dir():
        return None
    done = len(list(stats_dir.glob("task-*.json")))
    if done != world_size:
        raise RuntimeError(f"{stats_dir}: {done} of {world_size} decontaminate tasks counted; the step did not finish")
    record = json.loads(path.read_text(encoding="utf-8"))
    counters = merge_step_dir(stats_dir).get("counters", {})
    for kind in DECONTAMINATION_KINDS:
        for name, entry in record.get(kind, {}).items():
            entry["ngram"] = record["ngram"]
            entry["documents_removed"] = int(counters.get(removed_counter(name), 0))
    return record
