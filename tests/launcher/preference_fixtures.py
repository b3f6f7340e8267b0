"""A tiny random Llama saved by transformers with a word-level tokenizer (and a chat template), and preference
JSONL over its words: what the DPO tests tokenise, train and compare with TRL."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = 60  # w0 .. w59
SPECIALS = ["<pad>", "<eos>", "user", "assistant"]
VOCAB = WORDS + len(SPECIALS)
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def save_tokenizer(directory: Path) -> None:
    """tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast, eos/pad, a chat template) in `directory`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {token: i for i, token in enumerate(SPECIALS + [f"w{i}" for i in range(WORDS)])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    tokenizer.add_special_tokens(["<pad>", "<eos>"])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def save_tiny_llama(directory: Path, seed: int = 0, scale: float = 0.2) -> Path:
    """A random float32 Llama over VOCAB (weights ~ N(0, scale) so log-probabilities differ per token) + tokenizer."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, scale)
    model.save_pretrained(directory)
    save_tokenizer(directory)
    return directory


def words(rng, n: int) -> str:
    return " ".join(f"w{int(i)}" for i in rng.integers(0, WORDS, n))


def write_pairs(path: Path, n: int, seed: int = 0, conversational: bool = False) -> Path:
    """`n` preference rows of random words (prompts 2-6 words, responses 1-7), plain text or messages."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        prompt = words(rng, int(rng.integers(2, 7)))
        chosen, rejected = words(rng, int(rng.integers(1, 8))), words(rng, int(rng.integers(1, 8)))
        if chosen == rejected:
            rejected += " w0"
        if conversational:
            row = {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        else:
            row = {"prompt": prompt + " ", "chosen": chosen, "rejected": rejected}
        lines.append(json.dumps(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
