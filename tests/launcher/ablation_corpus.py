"""Two data variants with a planted difference, and tasks to find it, for the ablation tests.

Real text nobody here wrote: the docstrings of Python's standard library (tests/data_pipeline/real_text.py). Every
document is split into paragraphs; a held-out slice of documents makes the tasks (a 4-choice cloze on the last word
of a sentence, and a rolling perplexity over paragraphs), the rest is the training text. Variant `clean` is that
text; variant `noisy` is the same documents with every third one replaced by boilerplate (navigation, cookie and
copyright lines) and lines repeated many times, so at the same token budget it sees a third less of the clean text
and many tokens of junk. Both are tokenized with one byte-level BPE trained on the clean text, written beside each
shard set, so both variants are scored with the same tokenizer."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

VOCAB = 512
TASKS = ("abl_cloze", "abl_ppl")
BOILERPLATE = (
    "Home | About | Contact | Privacy Policy | Terms of Service",
    "We use cookies to improve your experience. Accept all cookies?",
    "Copyright (c) All rights reserved. Subscribe to our newsletter!",
    "Click here to read more. Share on Facebook. Share on Twitter.",
    "Skip to main content. Log in. Sign up. Search this site.",
)


def _documents() -> list[str]:
    from tests.data_pipeline.real_text import stdlib_docstrings

    docs = [re.sub(r"[ \t]+", " ", text).strip() for _, text in stdlib_docstrings(min_words=80)]
    return [d for d in docs if d.isascii()]


def _junk(rnd: random.Random, length: int) -> str:
    """A boilerplate page about as long as the document it replaces: template lines, some repeated many times."""
    lines = []
    while sum(len(line) + 1 for line in lines) < length:
        line = rnd.choice(BOILERPLATE)
        lines += [line] * rnd.randint(1, 6)
    return "\n".join(lines)


def _shards(texts: list[str], tokenizer_json: Path, out: Path, tag: str) -> Path:
    import shutil

    from tokenizers import Tokenizer

    from data_pipeline.formats import ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    eos = tokenizer.token_to_id("<|endoftext|>")
    with ShardWriter(out, "part0", vocab_size=VOCAB, eos_id=eos, tokenizer_id=f"ablation-{tag}") as writer:
        for text in texts:
            writer.add_document(tokenizer.encode(text).ids + [eos])
    return out


def write_variants(root: Path, held_out: int = 60) -> dict[str, Path]:
    """{'clean': shard dir, 'noisy': shard dir, 'tasks': task dir, 'clean_jsonl': raw clean text as JSONL}."""
    from data_pipeline.tokenizer import save_tokenizer, train_bpe

    docs = _documents()
    rnd = random.Random(0)
    order = list(range(len(docs)))
    rnd.shuffle(order)
    test = [docs[i] for i in order[:held_out]]
    train = [docs[i] for i in order[held_out:]]
    tokenizer_json = save_tokenizer(train_bpe(train, VOCAB), root / "tokenizer" / "tokenizer.json")
    noisy = [_junk(rnd, len(doc)) if i % 3 == 0 else doc for i, doc in enumerate(train)]
    clean_jsonl = root / "raw" / "clean.jsonl"
    clean_jsonl.parent.mkdir(parents=True, exist_ok=True)
    clean_jsonl.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(train)))
    return {
        "clean": _shards(train, tokenizer_json, root / "clean", "clean"),
        "noisy": _shards(noisy, tokenizer_json, root / "noisy", "noisy"),
        "tasks": write_tasks(test, root / "tasks"),
        "clean_jsonl": clean_jsonl,
        "tokenizer": tokenizer_json,
    }


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_tasks(docs: list[str], tasks: Path, cloze_items: int = 160, paragraphs: int = 40) -> Path:
    tasks.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(1)
    flat = " ".join(re.sub(r"\s+", " ", d) for d in docs)
    items = []
    for sentence in re.split(r"(?<=[.])\s+", flat):
        words = sentence.split()
        if 6 <= len(words) <= 24:
            last = re.sub(r"\W+$", "", words[-1])
            if last.isalpha() and len(last) > 2:
                items.append((" ".join(words[:-1]), last))
    endings = sorted({last for _, last in items})
    cloze = []
    for context, last in items[:cloze_items]:
        choices = rnd.sample([w for w in endings if w != last], 3) + [last]
        rnd.shuffle(choices)
        cloze.append({"context": context, "choices": choices, "label": choices.index(last)})
    paras = [re.sub(r"\s+", " ", p).strip() for d in docs for p in re.split(r"\n\s*\n", d)]
    ppl = [{"text": p} for p in paras if 150 <= len(p) <= 500][:paragraphs]
    cloze_file, ppl_file = _jsonl(tasks / "cloze.jsonl", cloze), _jsonl(tasks / "paragraphs.jsonl", ppl)
    (tasks / "abl_cloze.yaml").write_text(
        "task: abl_cloze\noutput_type: multiple_choice\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {cloze_file}\n"
        "test_split: test\ndoc_to_text: '{{context}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    (tasks / "abl_ppl.yaml").write_text(
        "task: abl_ppl\noutput_type: loglikelihood_rolling\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {ppl_file}\n"
        "test_split: test\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n"
    )
    return tasks
