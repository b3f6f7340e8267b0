"""Tiny Loom runs for the scorer tests: a byte-level BPE trained on the licence texts every Debian machine ships,
a random Llama-style or Mixtral-style model saved as a run directory's checkpoint beside that tokenizer, and its
Hugging Face export (what lm-eval's HFLM loads as the reference)."""

from __future__ import annotations

from pathlib import Path

import torch

LICENSES = Path("/usr/share/common-licenses")
VOCAB = 320
MAX_SEQ_LEN = 48  # short, so truncation and several rolling windows happen on a few sentences

COMMON = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": MAX_SEQ_LEN, "multiple_of": 32}
CONFIGS = {
    "llama": dict(name="tiny_eval_llama", **COMMON),
    "mixtral": dict(
        name="tiny_eval_mixtral",
        rope_theta=1e6,
        hidden_dim=96,
        **COMMON,
        moe={"num_experts": 4, "top_k": 2, "expert_hidden_dim": 64},
    ),
}


def license_text(name: str = "GPL-3", start: int = 0, chars: int = 20000) -> str:
    return (LICENSES / name).read_text(encoding="utf-8")[start : start + chars]


def train_tokenizer(directory: Path) -> Path:
    """tokenizer.json (vocab VOCAB, <|endoftext|> as its one special token) trained on two licences."""
    from data_pipeline.tokenizer import save_tokenizer, train_bpe

    texts = [license_text("GPL-3"), license_text("Apache-2.0")]
    return save_tokenizer(train_bpe(texts, VOCAB), directory / "tokenizer.json")


def make_run(root: Path, family: str, tokenizer_json: Path, seed: int = 0, steps: int = 40) -> Path:
    """<root>/run: checkpoints/step_00000001 of a `family` model trained `steps` AdamW steps on a licence text (so
    it continues text with real words: greedy continuations re-encode to themselves and is_greedy can be true),
    with tokenizer.json beside it."""
    import shutil

    from tokenizers import Tokenizer

    from model import build
    from model.checkpoint_io import save_model_checkpoint, step_dir_name
    from model.config import ModelConfig

    cfg = ModelConfig.coerce({**CONFIGS[family], "vocab_size": VOCAB})
    torch.manual_seed(seed)
    model = build(cfg)
    model.init_weights()
    ids = torch.tensor(Tokenizer.from_file(str(tokenizer_json)).encode(license_text("GPL-2")).ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - MAX_SEQ_LEN - 1, (8,), generator=generator)
        windows = torch.stack([ids[s : s + MAX_SEQ_LEN + 1] for s in starts.tolist()])
        loss = model(windows[:, :-1], windows[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    run = root / "run"
    save_model_checkpoint(model.state_dict(), cfg, run / "checkpoints" / step_dir_name(1), step=1)
    shutil.copyfile(tokenizer_json, run / "tokenizer.json")
    return run


def export(run: Path, hf_dir: Path) -> Path:
    from model.hf import export_checkpoint

    return export_checkpoint(run, hf_dir)


_CACHE: dict[str, tuple[Path, Path]] = {}


def cached_run(family: str) -> tuple[Path, Path]:
    """(run dir, its HF export) of `family`, built once per test process (training is the slow part) in a
    temporary directory removed at exit; tests must not modify them."""
    import atexit
    import shutil
    import tempfile

    if family not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix=f"loom_eval_{family}_"))
        atexit.register(shutil.rmtree, root, True)
        tokenizer_json = train_tokenizer(root)
        run = make_run(root, family, tokenizer_json)
        _CACHE[family] = (run, export(run, root / "hf"))
    return _CACHE[family]


def write_license_tasks(directory: Path, n_docs: int = 10) -> Path:
    """Three small lm-eval YAML tasks over licence sentences (data files by absolute path, so lm-eval itself reads
    them from any working directory): license_choice (multiple_choice, 4 continuations, the true one first in
    the text), license_ppl (loglikelihood_rolling) and license_gen (generate_until, until newline or '.')."""
    import json

    text = license_text("GPL-2", start=4000, chars=12000).replace("\n", " ")
    sentences = [" ".join(s.split()) for s in text.split(".") if len(s.split()) >= 8][: n_docs + 3]
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, sentence in enumerate(sentences[:n_docs]):
        words = sentence.split()
        true = " ".join(words[4:7])
        others = [" ".join(sentences[(i + k) % len(sentences)].split()[4:7]) for k in (1, 2, 3)]
        gold = i % 4
        choices = others[:gold] + [true] + others[gold:]
        rows.append(
            {
                "context": " ".join(words[:4]),
                "choices": choices,
                "gold": gold,
                "text": sentence,
                "answer": " ".join(words[4:6]),
            }
        )
    data = directory / "license.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        f"metadata:\n  version: 1.0\n"
    )
    (directory / "license_choice.yaml").write_text(
        "task: license_choice\n" + common + 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n'
        "    aggregation: mean\n    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n"
        "    higher_is_better: true\n",
        encoding="utf-8",
    )
    (directory / "license_ppl.yaml").write_text(
        "task: license_ppl\n" + common + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n'
        "  - metric: bits_per_byte\n",
        encoding="utf-8",
    )
    (directory / "license_gen.yaml").write_text(
        "task: license_gen\n" + common + 'output_type: generate_until\ndoc_to_text: "{{context}}"\n'
        'doc_to_target: " {{answer}}"\ngeneration_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 8\n'
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n",
        encoding="utf-8",
    )
    return directory


def require_lm_eval_hf() -> None:
    """lm-eval and accelerate (its HFLM imports it) are dev dependencies: missing, the comparison fails with the
    fix named instead of skipping, so a reference check never silently stops running."""
    import pytest

    try:
        import accelerate  # noqa: F401
        import lm_eval  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"{exc}: install the dev extra (pip install -e '.[dev]'): lm-eval and its HFLM's accelerate")
