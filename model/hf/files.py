"""Files of a Hugging Face model directory: safetensors weights (sharded with an index when large), config.json,
and the tokenizer files that make it usable with no extra step (AutoTokenizer, pipeline("text-generation")).

A Loom run keeps its data's tokenizer as `<run_dir>/tokenizer.json` (a bare `tokenizers` file): export adds
tokenizer_config.json and special_tokens_map.json naming its bos/eos/pad tokens, and generation_config.json with
their ids. A tokenizer that already comes with its HF files (an imported model) is copied as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.hf.common import DEFAULT_MAX_SHARD_BYTES, SAFETENSORS_FILE, SAFETENSORS_INDEX, HFConversionError

TOKENIZER_JSON = "tokenizer.json"
# Every file transformers' tokenizers and generation read from a model directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>", "[EOS]", "<|end|>")
_BOS = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]", "<|bos|>")
_PAD = ("<pad>", "<|pad|>", "[PAD]", "<|padding|>", "<|finetune_right_pad_id|>")


# ---------------------------------------------------------------------------------------------- tokenizer
@dataclass
class SpecialTokens:
    """bos/eos/pad as (text, id), None when the tokenizer has no such token."""

    bos: Optional[tuple[str, int]]
    eos: Optional[tuple[str, int]]
    pad: Optional[tuple[str, int]]

    def ids(self) -> dict[str, Optional[int]]:
        return {
            f"{name}_token_id": (tok[1] if tok else None)
            for name, tok in (("bos", self.bos), ("eos", self.eos), ("pad", self.pad))
        }


def tokenizer_dirs(path: str | os.PathLike) -> list[Path]:
    """Where a model's tokenizer may sit: the directory itself and, for a checkpoint inside a run
    (<run>/checkpoints/step_N), the run directory."""
    path = Path(path)
    dirs = [path]
    if path.parent.name == "checkpoints":
        dirs.append(path.parent.parent)
    return dirs


def find_tokenizer_dir(*paths: str | os.PathLike) -> Optional[Path]:
    """The first directory (of `tokenizer_dirs` of each path, in order) holding a tokenizer.json or an HF
    tokenizer_config.json, or None."""
    for path in paths:
        for directory in tokenizer_dirs(path):
            if (directory / TOKENIZER_JSON).is_file() or (directory / "tokenizer_config.json").is_file():
                return directory
    return None


def special_tokens(directory: Path) -> SpecialTokens:
    """bos/eos/pad of the tokenizer in `directory`: from tokenizer_config.json when there is one, else guessed
    from tokenizer.json's special tokens by their usual names (a single special token is all three, as in
    GPT-2 and the tokenizers Loom's data pipeline trains)."""
    vocab: dict[str, int] = {}
    specials: list[str] = []
    if (directory / TOKENIZER_JSON).is_file():
        data = json.loads((directory / TOKENIZER_JSON).read_text(encoding="utf-8"))
        for token in data.get("added_tokens", []):
            vocab[token["content"]] = token["id"]
            if token.get("special"):
                specials.append(token["content"])
        model_vocab = (data.get("model") or {}).get("vocab")
        if isinstance(model_vocab, dict):
            vocab = {**model_vocab, **vocab}

    def lookup(text: Optional[str]) -> Optional[tuple[str, int]]:
        return (text, vocab[text]) if text is not None and text in vocab else None

    config_path = directory / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))

        def named(key: str) -> Optional[str]:
            value = config.get(key)
            return value.get("content") if isinstance(value, dict) else value

        return SpecialTokens(lookup(named("bos_token")), lookup(named("eos_token")), lookup(named("pad_token")))

    def first(names: tuple[str, ...]) -> Optional[str]:
        return next((n for n in names if n in specials), None)

    eos = first(_EOS) or (specials[0] if len(specials) == 1 else None)
    bos = first(_BOS) or eos
    pad = first(_PAD) or eos
    return SpecialTokens(lookup(bos), lookup(eos), lookup(pad))


def write_tokenizer_files(source: Path, target: Path, *, model_max_length: int) -> SpecialTokens:
    """Copy the tokenizer in `source` into the model directory `target`, completing a bare tokenizer.json with
    tokenizer_config.json, special_tokens_map.json and generation_config.json."""
    specials = special_tokens(source)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    if not (source / "tokenizer_config.json").is_file():
        named = {
            f"{k}_token": v[0]
            for k, v in (("bos", specials.bos), ("eos", specials.eos), ("pad", specials.pad))
            if v is not None
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model_max_length,
            "clean_up_tokenization_spaces": False,
            **named,
        }
        (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        (target / "special_tokens_map.json").write_text(json.dumps(named, indent=2))
    if not (source / "generation_config.json").is_file():
        write_generation_config(target, specials)
    return specials


def write_generation_config(target: Path, specials: SpecialTokens) -> None:
    (target / "generation_config.json").write_text(json.dumps(specials.ids(), indent=2))


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    """The tokenizer files of `source` copied as they are into `target` (import: kept beside the checkpoint)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    return copied


# ---------------------------------------------------------------------------------------------- weights + config
def _replace_dir(tmp: Path, final: Path, overwrite: bool) -> None:
    stale = None
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"{final}: already exists; pass --overwrite (overwrite=True) or pick another path")
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
        os.replace(final, stale)
    os.replace(tmp, final)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of `out_dir` to write into, renamed into place when the block ends (and removed if it
    fails), so a reader never sees a half-written directory; an existing `out_dir` is refused unless `overwrite`."""
    final = Path(out_dir)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists; pass --overwrite (overwrite=True) or pick another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _replace_dir(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_hf_dir(
    hf_state: dict[str, torch.Tensor],
    config: dict,
    hf_dir: str | os.PathLike,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    tokenizer_dir: Optional[Path] = None,
) -> Path:
    """config.json + safetensors (sharded with an index above `max_shard_bytes`) + the tokenizer files of
    `tokenizer_dir` (with its special-token ids in config.json), written into a temporary sibling directory and
    renamed into place so a reader never sees a half-written model."""
    with staged_dir(hf_dir, overwrite=overwrite) as tmp:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for key, tensor in hf_state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = tensor
            size += nbytes
        if len(shards) == 1:
            save_file(shards[0], str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({key: name for key in shard})
            total = sum(t.numel() * t.element_size() for t in hf_state.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
        config = dict(config)
        if tokenizer_dir is not None:
            max_len = config.get("max_position_embeddings", config.get("n_positions", 1 << 30))
            specials = write_tokenizer_files(tokenizer_dir, tmp, model_max_length=max_len)
            config.update(specials.ids())
        else:
            config.update(bos_token_id=None, eos_token_id=None, pad_token_id=None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return Path(hf_dir)


def read_hf_config(hf_dir: str | os.PathLike) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConversionError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HFConversionError(f"{path}: not valid JSON ({exc})") from exc
    return config


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    hf_dir = Path(hf_dir)
    if (hf_dir / SAFETENSORS_INDEX).is_file():
        weight_map = json.loads((hf_dir / SAFETENSORS_INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (hf_dir / SAFETENSORS_FILE).is_file():
        files = [SAFETENSORS_FILE]
    else:
        raise HFConversionError(
            f"{hf_dir}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}; only safetensors weights are read "
            "(re-save a pytorch_model.bin model with transformers' save_pretrained first)"
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(hf_dir / name), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state
