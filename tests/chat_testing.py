"""Tiny tokenizers with chat templates for the SFT tests: a byte-level BPE trained on a few sentences, saved as a
Hugging Face tokenizer directory (ChatML-style template, with or without `{% generation %}` markers) or as a
plain tokenizer.json (the Loom template)."""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.tokenizer import DEFAULT_EOS, save_tokenizer, train_bpe

SPECIAL = (DEFAULT_EOS, "<|im_start|>", "<|im_end|>")
_ROLE_CHECK = (
    "{% if m.role not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
)
CHATML = (
    "{% for m in messages %}" + _ROLE_CHECK + "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_GENERATION = (
    "{% for m in messages %}" + _ROLE_CHECK + "<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<|im_end|>\n{% endgeneration %}"
    "{% else %}{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXTS = [
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a story about a river and a stone. Once upon a time a quiet river met a stone.",
    "system user assistant hello thanks good bye yes no maybe numbers 1 2 3 4 5",
]


def bpe(vocab_size: int = 400):
    return train_bpe(TEXTS * 20, vocab_size, SPECIAL, min_frequency=1)


def tokenizer_json(directory: Path) -> Path:
    """A plain tokenizer.json (no chat template: the Loom template renders)."""
    return save_tokenizer(bpe(), Path(directory) / "tokenizer.json")


def hf_tokenizer_dir(directory: Path, template: str = CHATML, eos: str = DEFAULT_EOS) -> Path:
    """A Hugging Face tokenizer directory with `template` as its chat template and `eos` as its eos token."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe(), eos_token=eos, pad_token=DEFAULT_EOS)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(directory)
    return Path(directory)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path
