"""Tasks in lm-eval's YAML over JSONL made from the license texts on this machine (/usr/share/common-licenses).

`write_task_dir(root)` writes: two 4-choice cloze tasks (last word of a license sentence; few-shot from a train split,
and from the evaluated split itself), sharing a base file through `include:`, and a group of both with aggregate
metrics; a third cloze task (first_n few-shot, gen_prefix, mutual-information accuracy); a rolling-perplexity task over
license paragraphs; a generation task (complete a sentence) with stop strings, and a copy of it with several gold
answers per document. Documents are real text; only their arrangement into fields is made here.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")


def _text(name: str) -> str:
    return re.sub(r"\s+", " ", (LICENSES / name).read_text(encoding="utf-8"))


def sentences(name: str, lo: int = 8, hi: int = 30) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.;])\s+", _text(name)) if lo <= len(s.split()) <= hi]


def paragraphs(name: str, lo: int = 200, hi: int = 600) -> list[str]:
    raw = (LICENSES / name).read_text(encoding="utf-8")
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", raw)]
    return [p for p in paras if lo <= len(p) <= hi]


def cloze_docs(name: str, count: int, seed: int) -> list[dict]:
    """4-choice cloze: the sentence without its last word, the true last word and three others' last words."""
    rnd = random.Random(seed)
    items = []
    for s in sentences(name):
        words = s.split()
        last = re.sub(r"\W+$", "", words[-1])
        if last.isalpha():
            items.append((" ".join(words[:-1]), last))
    endings = sorted({last for _, last in items})
    docs = []
    for context, last in items:
        distractors = rnd.sample([w for w in endings if w != last], 3)
        choices = distractors + [last]
        rnd.shuffle(choices)
        docs.append({"context": context, "choices": choices, "label": choices.index(last)})
        if len(docs) == count:
            break
    return docs


def completion_docs(name: str, count: int) -> list[dict]:
    docs = []
    for s in sentences(name, 10, 24):
        words = s.split()
        half = len(words) // 2
        docs.append({"prompt": " ".join(words[:half]), "answer": " ".join(words[half:])})
    return docs[:count]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_task_dir(root: Path) -> Path:
    """The task directory (YAML + data) for the comparisons; returns the directory to pass as task_dirs."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    gpl = cloze_docs("GPL-3", 40, seed=0)
    _write_jsonl(data / "cloze_gpl_train.jsonl", gpl[:20])
    _write_jsonl(data / "cloze_gpl_test.jsonl", gpl[20:])
    _write_jsonl(data / "cloze_apache_test.jsonl", cloze_docs("Apache-2.0", 16, seed=1))
    gpl2 = cloze_docs("GPL-2", 24, seed=2)
    _write_jsonl(data / "cloze_gpl2_train.jsonl", gpl2[:8])
    _write_jsonl(data / "cloze_gpl2_test.jsonl", gpl2[8:])
    _write_jsonl(data / "license_paragraphs.jsonl", [{"text": p} for p in paragraphs("GPL-3")[:12]])
    completions = completion_docs("MPL-2.0", 28)
    _write_jsonl(data / "complete_train.jsonl", completions[:8])
    _write_jsonl(data / "complete_test.jsonl", completions[8:])

    tasks = root / "tasks"
    (tasks / "cloze").mkdir(parents=True, exist_ok=True)
    (tasks / "cloze" / "_cloze_base.yaml").write_text(
        "output_type: multiple_choice\n"
        "dataset_path: json\n"
        "test_split: test\n"
        "doc_to_text: '{{context}}'\n"
        "metric_list:\n"
        "  - metric: acc\n"
        "  - metric: acc_norm\n"
        "  - metric: brier_score\n"
        "  - metric: bits_per_byte\n"
        "metadata:\n  version: 1.0\n"
    )
    (tasks / "cloze" / "cloze_gpl.yaml").write_text(
        "include: _cloze_base.yaml\n"
        "task: cloze_gpl\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data / 'cloze_gpl_train.jsonl'}\n"
        f"    test: {data / 'cloze_gpl_test.jsonl'}\n"
        "fewshot_split: train\n"
        "num_fewshot: 3\n"
        'description: "Each sentence ends with the word that fits.\\n\\n"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
    )
    (tasks / "cloze" / "cloze_apache.yaml").write_text(
        "include: _cloze_base.yaml\n"
        "task: cloze_apache\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'cloze_apache_test.jsonl'}\n"
        "fewshot_split: test\n"
        "num_fewshot: 2\n"
        "doc_to_text: 'Sentence: {{context}}'\n"
        "target_delimiter: ' ->'\n"
        'fewshot_delimiter: "\\n"\n'
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{choices[label]}}'\n"
    )
    (tasks / "cloze" / "cloze_group.yaml").write_text(
        "group: cloze\n"
        "task:\n  - cloze_gpl\n  - cloze_apache\n"
        "aggregate_metric_list:\n"
        "  - metric: acc\n    weight_by_size: true\n"
        "  - metric: acc_norm\n    weight_by_size: false\n"
        "metadata:\n  version: 2.0\n"
    )
    (tasks / "cloze_gpl2.yaml").write_text(  # first_n few-shot, a generation prefix, a text target
        "task: cloze_gpl2\n"
        "task_alias: GPL-2 cloze\n"
        "output_type: multiple_choice\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data / 'cloze_gpl2_train.jsonl'}\n"
        f"    test: {data / 'cloze_gpl2_test.jsonl'}\n"
        "test_split: test\n"
        "fewshot_split: train\n"
        "num_fewshot: 2\n"
        "fewshot_config:\n  sampler: first_n\n"
        "gen_prefix: 'Last word:'\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{choices[label]}}'\n"
        "metric_list:\n  - metric: acc_mutual_info\n  - metric: acc_bytes\n  - metric: exact_match\n"
    )
    (tasks / "license_ppl.yaml").write_text(
        "task: license_ppl\n"
        "output_type: loglikelihood_rolling\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'license_paragraphs.jsonl'}\n"
        "test_split: test\n"
        "doc_to_text: ''\n"
        "doc_to_target: '{{text}}'\n"
        "metric_list:\n"
        "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
    )
    (tasks / "license_last_word.yaml").write_text(
        "task: license_last_word\n"
        "output_type: loglikelihood\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data / 'cloze_apache_test.jsonl'}\n"
        "test_split: test\n"
        "doc_to_text: '{{context}}'\n"
        "doc_to_target: ' {{choices[label]}}'\n"
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n"
    )
    (tasks / "license_complete.yaml").write_text(
        "task: license_complete\n"
        "output_type: generate_until\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data / 'complete_train.jsonl'}\n"
        f"    test: {data / 'complete_test.jsonl'}\n"
        "test_split: test\n"
        "fewshot_split: train\n"
        "num_fewshot: 2\n"
        "doc_to_text: 'Continue: {{prompt}}'\n"
        "doc_to_target: '{{answer}}'\n"
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n"
        "  - metric: exact_match\n    ignore_case: true\n"
        "  - metric: bleu\n  - metric: chrf\n"
        "  - metric: rouge1\n  - metric: rouge2\n  - metric: rougeL\n"
    )
    (tasks / "license_complete_any.yaml").write_text(  # the same requests again, and several gold answers
        "include: license_complete.yaml\n"
        "task: license_complete_any\n"
        "doc_to_target: '{{[answer, answer.split()[0]]}}'\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return tasks
