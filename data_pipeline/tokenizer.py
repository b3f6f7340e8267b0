"""The tokenizer the pipeline packs with and the trainer decodes with: byte-level BPE from HF `tokenizers`.

Byte-level (GPT-2 style pre-tokenisation, no normaliser) so every string round-trips exactly: decode(encode(t))
== t, and no text is ever mapped to an unknown token. The tokenizer is identified by a hash of its canonical
tokenizer.json, which goes into every shard header, so shards from different tokenizers are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

DEFAULT_EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (DEFAULT_EOS,),
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a byte-level BPE on `texts`; special tokens get the first ids, in the order given."""
    n_special = len(special_tokens)
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet) + n_special:
        raise ValueError(
            f"tokenizer vocab_size={vocab_size}: a byte-level BPE needs at least 256 byte tokens plus "
            f"{n_special} special tokens ({256 + n_special})"
        )
    if len(set(special_tokens)) != n_special:
        raise ValueError(f"tokenizer special_tokens {list(special_tokens)}: duplicates")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=byte_alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> Path:
    """Write tokenizer.json atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(tokenizer.to_str(pretty=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {path}: no such file (give a tokenizer.json, or unset it to train one)")
    try:
        return Tokenizer.from_file(os.fspath(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"tokenizer {path}: not a valid HF tokenizers tokenizer.json ({exc})") from exc


def tokenizer_id(tokenizer: Tokenizer) -> str:
    """Stable id: hash of the canonical (sorted-key, compact) tokenizer.json."""
    canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True, separators=(",", ":"))
    return "bpe-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class TokenizerInfo:
    """What a shard header records about its tokenizer."""

    id: str
    vocab_size: int
    eos_id: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, eos_token: str = DEFAULT_EOS) -> "TokenizerInfo":
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(
                f"tokenizer has no end-of-document token {eos_token!r}: add it to special_tokens or set eos_token"
            )
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        return cls(id=tokenizer_id(tokenizer), vocab_size=vocab_size, eos_id=eos_id)
