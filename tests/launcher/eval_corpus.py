"""A packed corpus with its tokenizer and three lm-eval YAML tasks over it, for the in-loop evaluation tests.

The text is the licence texts every Debian machine ships (/usr/share/common-licenses): a byte-level BPE of 320
tokens trained on two of them, every paragraph of three licences as one document in two shards, and tasks built
from their sentences: a 4-choice cloze (last word of a sentence, 2-shot), a rolling perplexity over paragraphs and
a generation task (complete a sentence; stop at "." or a newline, 6 tokens at most)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")
VOCAB = 320
TASKS = ("lic_cloze", "lic_ppl", "lic_complete")


def _read(name: str) -> str:
    return (LICENSES / name).read_text(encoding="utf-8")


def _sentences(name: str, lo: int, hi: int) -> list[str]:
    flat = re.sub(r"\s+", " ", _read(name))
    return [s.strip() for s in re.split(r"(?<=[.;])\s+", flat) if lo <= len(s.split()) <= hi]


def write_corpus(root: Path) -> tuple[Path, Path]:
    """(shard directory with tokenizer.json, task directory)."""
    from tokenizers import Tokenizer

    from data_pipeline.formats import ShardWriter
    from data_pipeline.tokenizer import save_tokenizer, train_bpe

    shards = root / "shards"
    tokenizer_json = save_tokenizer(train_bpe([_read("GPL-3"), _read("Apache-2.0")], VOCAB), shards / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    eos = tokenizer.token_to_id("<|endoftext|>")
    for index, name in enumerate(("GPL-3", "Apache-2.0")):
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", _read(name)) if p.strip()]
        with ShardWriter(shards, f"part{index}", vocab_size=VOCAB, eos_id=eos, tokenizer_id="lic-bpe") as writer:
            for paragraph in paragraphs:
                writer.add_document(tokenizer.encode(paragraph).ids + [eos])
    return shards, write_tasks(root / "tasks")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tasks(tasks: Path) -> Path:
    tasks.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(0)
    items = []
    for sentence in _sentences("MPL-2.0", 8, 20):
        words = sentence.split()
        last = re.sub(r"\W+$", "", words[-1])
        if last.isalpha():
            items.append((" ".join(words[:-1]), last))
    endings = sorted({last for _, last in items})
    cloze = []
    for context, last in items[:12]:
        choices = rnd.sample([w for w in endings if w != last], 3) + [last]
        rnd.shuffle(choices)
        cloze.append({"context": context, "choices": choices, "label": choices.index(last)})
    cloze_file = _jsonl(tasks / "cloze.jsonl", cloze)
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", _read("MPL-2.0"))]
    ppl_file = _jsonl(tasks / "paragraphs.jsonl", [{"text": p} for p in paragraphs if 100 <= len(p) <= 400][:6])
    halves = []
    for sentence in _sentences("GPL-2", 10, 20)[:8]:
        words = sentence.split()
        halves.append({"prompt": " ".join(words[: len(words) // 2]), "answer": " ".join(words[len(words) // 2 :])})
    complete_file = _jsonl(tasks / "complete.jsonl", halves)
    (tasks / "lic_cloze.yaml").write_text(
        "task: lic_cloze\noutput_type: multiple_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {cloze_file}\n"
        "test_split: test\nfewshot_split: test\nnum_fewshot: 2\n"
        "doc_to_text: '{{context}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (tasks / "lic_ppl.yaml").write_text(
        "task: lic_ppl\noutput_type: loglikelihood_rolling\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {ppl_file}\n"
        "test_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (tasks / "lic_complete.yaml").write_text(
        "task: lic_complete\noutput_type: generate_until\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {complete_file}\n"
        "test_split: test\ndoc_to_text: 'Continue: {{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n  - metric: chrf\n"
    )
    return tasks


def eval_overrides(shards: Path, tasks: Path, run_dir: Path, *extra: str, names=TASKS) -> list[str]:
    """tiny_overrides on the licence corpus (vocab 320) with the tasks evaluated at steps 1 and 2."""
    from launcher_testing import tiny_overrides

    base = tiny_overrides(
        shards,
        run_dir,
        max_steps=2,
        **{
            "model.vocab_size": VOCAB,
            "model.n_kv_heads": 2,
            "trainer.checkpoint_every": 0,
            "eval.tasks": "[" + ",".join(names) + "]",
            "eval.task_dirs": f"[{tasks}]",
            "eval.every": 1,
            "eval.max_length": 32,
            "eval.batch_size": 4,
            "eval.bootstrap_iters": 0,
            "schedule.warmup_steps": 1,
        },
    )
    return base + list(extra)


DECONTAMINATION_KEYS = ("/decontaminated", "/decontamination")  # per task: the data's record, not a score


def eval_records(run_dir: Path, scores_only: bool = True) -> dict[int, dict[str, float]]:
    """{step: {eval/... key: value}} from metrics.jsonl (eval/time_s left out; with scores_only, the tasks'
    decontamination marks too)."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = {
            k: v
            for k, v in record.items()
            if k.startswith("eval/") and k != "eval/time_s" and not (scores_only and k.endswith(DECONTAMINATION_KEYS))
        }
        if values:
            out[record["step"]] = values
    return out
