"""lm-eval's own shipped task YAMLs (hellaswag, arc_easy, piqa, mmlu_anatomy, lambada_openai, wikitext, gsm8k) pointed
at small local JSONL copies in each dataset's schema, the way a user runs a common benchmark offline.

Each local YAML `include:`s the shipped file from the installed lm_eval package (its templates, `!function`
helpers, metrics and filters unchanged) and overrides only where the data lives: `dataset_path: json`,
`dataset_kwargs.data_files` per split, and the split names the copy has. The documents are sentences of the
licence texts on this machine arranged into each dataset's fields; only their arrangement is made here.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from task_fixtures import sentences

SHIPPED = ("hellaswag", "arc_easy", "piqa", "mmlu_anatomy", "lambada_openai", "wikitext", "gsm8k")


def shipped_yaml(relative: str) -> Path:
    import lm_eval.tasks

    path = Path(lm_eval.tasks.__file__).parent / relative
    assert path.is_file(), path
    return path


def _pool(count: int, seed: int) -> list[list[str]]:
    words = [s.split() for name in ("GPL-3", "Apache-2.0", "MPL-2.0") for s in sentences(name, 12, 30)]
    words = [w for w in words if max(map(len, w)) <= 12]  # no URLs: answers fit the tiny models' 48 positions
    random.Random(seed).shuffle(words)
    assert len(words) >= count, len(words)
    return words[:count]


def _phrase(words: list[str]) -> str:
    return " ".join(words).rstrip(".;,")


def hellaswag_docs(n: int) -> list[dict]:
    rows = []
    pool = _pool(n + 3, 1)
    for i, w in enumerate(pool[:n]):
        true = _phrase(w[8:11])
        others = [_phrase(pool[(i + k) % len(pool)][8:11]) for k in (1, 2, 3)]
        label = i % 4
        rows.append(
            {
                "ind": i,
                "activity_label": " ".join(w[:2]).title(),
                "ctx_a": " ".join(w[2:6]) + (" [title] " + w[6] if i % 3 == 0 else ""),
                "ctx_b": " ".join(w[6:8]),
                "ctx": " ".join(w[2:8]),
                "endings": [*others[:label], true, *others[label:]],
                "source_id": f"licence~{i}",
                "split": "val",
                "split_type": "indomain",
                "label": str(label),
            }
        )
    return rows


def arc_docs(n: int, seed: int) -> list[dict]:
    rows = []
    pool = _pool(n + 3, seed)
    for i, w in enumerate(pool[:n]):
        labels = ["1", "2", "3", "4"] if i % 5 == 4 else ["A", "B", "C", "D"]  # ARC has both kinds of labels
        answers = [_phrase(pool[(i + k) % len(pool)][-3:]) for k in range(4)]
        rnd = random.Random(i)
        order = rnd.sample(range(4), 4)
        rows.append(
            {
                "id": f"licence_{i}",
                "question": "What follows: " + " ".join(w[:-3]) + "?",
                "choices": {"text": [answers[j] for j in order], "label": labels},
                "answerKey": labels[order.index(0)],
            }
        )
    return rows


def piqa_docs(n: int) -> list[dict]:
    pool = _pool(n + 1, 3)
    return [
        {"goal": _phrase(w[:6]), "sol1": _phrase(w[6:12]), "sol2": _phrase(pool[i + 1][6:12]), "label": i % 2}
        if i % 2 == 0
        else {"goal": _phrase(w[:6]), "sol1": _phrase(pool[i + 1][6:12]), "sol2": _phrase(w[6:12]), "label": 1}
        for i, w in enumerate(pool[:n])
    ]


def mmlu_docs(n: int, seed: int) -> list[dict]:
    pool = _pool(n + 3, seed)
    rows = []
    for i, w in enumerate(pool[:n]):
        choices = [_phrase(pool[(i + k) % len(pool)][-4:]) for k in range(4)]
        answer = (i * 7) % 4
        choices[0], choices[answer] = choices[answer], choices[0]
        rows.append(
            {"question": " " + " ".join(w[:-4]) + " ", "subject": "anatomy", "choices": choices, "answer": answer}
        )
    return rows


def lambada_docs(n: int) -> list[dict]:
    return [{"text": " ".join(w).rstrip(".;,")} for w in _pool(n, 5)]


def wikitext_docs(n: int) -> list[dict]:
    """Pages in wikitext's tokenised style (spaced punctuation, @-@), so the shipped detokeniser has work."""
    pool = _pool(3 * n, 6)
    pages = []
    for i in range(n):
        body = " ".join(" ".join(w) for w in pool[3 * i : 3 * i + 3])
        body = re.sub(r"([,.;:])", r" \1", body).replace("-", " @-@ ")
        pages.append({"page": f" = Licence {i} = \n {body} \n"})
    return pages


def gsm8k_docs(n: int, seed: int) -> list[dict]:
    pool = _pool(n, seed)
    rows = []
    for i, w in enumerate(pool):
        a, b = len(w), len(w[0]) + i
        rows.append(
            {
                "question": f"{' '.join(w[:10])}: the clause has {a} words and {b} more are added. How many?",
                "answer": f"It has {a} words.\n{a} + {b} = {a + b}\n#### {a + b:,}",
            }
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _local_yaml(directory: Path, task: str, include: Path, files: dict[str, Path], extra: str = "") -> None:
    data_files = "".join(f"    {split}: {path}\n" for split, path in files.items())
    (directory / f"{task}.yaml").write_text(
        f"include: {include}\ntask: {task}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n{data_files}{extra}",
        encoding="utf-8",
    )


def write_shipped_task_dir(root: Path, n: int = 20) -> Path:
    """<root>/shipped: one local YAML per SHIPPED task (same task names as lm-eval's) and its JSONL."""
    directory = root / "shipped"
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    _local_yaml(
        directory,
        "hellaswag",
        shipped_yaml("hellaswag/hellaswag.yaml"),
        {"validation": _write_jsonl(data / "hellaswag_val.jsonl", hellaswag_docs(n))},
        "training_split: null\n",
    )
    _local_yaml(
        directory,
        "arc_easy",
        shipped_yaml("arc/arc_easy.yaml"),
        {
            "train": _write_jsonl(data / "arc_train.jsonl", arc_docs(8, 11)),
            "test": _write_jsonl(data / "arc_test.jsonl", arc_docs(n, 12)),
        },
        "validation_split: null\nnum_fewshot: 2\n",
    )
    _local_yaml(
        directory,
        "piqa",
        shipped_yaml("piqa/piqa.yaml"),
        {"validation": _write_jsonl(data / "piqa_val.jsonl", piqa_docs(n))},
        "training_split: null\n",
    )
    _local_yaml(
        directory,
        "mmlu_anatomy",
        shipped_yaml("mmlu/default/mmlu_anatomy.yaml"),
        {
            "dev": _write_jsonl(data / "mmlu_dev.jsonl", mmlu_docs(5, 13)),
            "test": _write_jsonl(data / "mmlu_test.jsonl", mmlu_docs(n, 14)),
        },
        "num_fewshot: 2\n",
    )
    _local_yaml(
        directory,
        "lambada_openai",
        shipped_yaml("lambada/lambada_openai.yaml"),
        {"test": _write_jsonl(data / "lambada_test.jsonl", lambada_docs(n))},
    )
    _local_yaml(
        directory,
        "wikitext",
        shipped_yaml("wikitext/wikitext.yaml"),
        {"test": _write_jsonl(data / "wikitext_test.jsonl", wikitext_docs(max(2, n // 4)))},
        "training_split: null\nvalidation_split: null\n",
    )
    _local_yaml(
        directory,
        "gsm8k",
        shipped_yaml("gsm8k/gsm8k.yaml"),
        {
            "train": _write_jsonl(data / "gsm8k_train.jsonl", gsm8k_docs(10, 15)),
            "test": _write_jsonl(data / "gsm8k_test.jsonl", gsm8k_docs(max(2, n // 2), 16)),
        },
        "num_fewshot: 2\ngeneration_kwargs:\n  until: ['Question:', '\\n\\n']\n  do_sample: false\n"
        "  temperature: 0.0\n  max_gen_toks: 12\n",
    )
    return directory
