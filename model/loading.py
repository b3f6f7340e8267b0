"""Open any model Loom can read, for generation and evaluation alike: a Loom run directory (its newest complete
checkpoint), a Loom checkpoint (step_<N>/) or a Hugging Face model directory, with the tokenizer found beside it,
its end-of-sequence ids and its padding id. Library code: the commands (`python -m model.generate`, the
evaluator) import it; it imports no command.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from model.dtypes import torch_dtype


class GenerateError(ValueError):
    """A path, prompt or option the command cannot use; the message says which and why."""


@dataclass
class LoadedModel:
    model: Any  # model.transformer.Transformer, in eval mode
    tokenizer: Any  # a `tokenizers.Tokenizer`, or None
    stop_ids: list[int]
    pad_id: int
    tokenizer_dir: Optional[Path] = None  # where the tokenizer was found (its special tokens, tokenizer_config.json)


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()  # (its weights are checked when read: safetensors only)


def _is_loom_checkpoint(path: Path) -> bool:
    from model.checkpoint_io import CHECKPOINTS_DIR, COMPLETE_MARKER, DCP_METADATA_FILE

    return any((path / name).exists() for name in (COMPLETE_MARKER, DCP_METADATA_FILE, CHECKPOINTS_DIR))


def _eos_ids(directory: Path) -> list[int]:
    """End-of-sequence ids from generation_config.json, else config.json (an id or a list)."""
    for name in ("generation_config.json", "config.json"):
        path = directory / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            if value is not None:
                return [value] if isinstance(value, int) else list(value)
    return []


def load_model(path: str | os.PathLike, *, dtype: str = "fp32", device: str = "cpu") -> LoadedModel:
    """The model at `path` (run dir, checkpoint or HF dir), its tokenizer when one is beside it, and its stop ids."""
    import torch

    from model import build
    from model.hf.files import find_tokenizer_dir, special_tokens

    path = Path(path)
    if not path.exists():
        raise GenerateError(f"{path}: no such file or directory")
    if _is_hf_dir(path):
        from model.hf import read_hf_model

        state, cfg = read_hf_model(path)
        search = [path]
    elif path.is_dir() and _is_loom_checkpoint(path):
        from model.checkpoint_io import load_model_checkpoint, resolve_checkpoint_dir

        checkpoint = resolve_checkpoint_dir(path)
        state, cfg = load_model_checkpoint(checkpoint)
        search = [checkpoint, path]
    else:
        raise GenerateError(
            f"{path}: not a Loom run directory (with checkpoints/), a Loom checkpoint (with COMPLETE) or a Hugging "
            f"Face model directory (with config.json and safetensors weights)"
        )
    with torch.device("meta"):
        model = build(cfg)
    model.to_empty(device=device)
    model.init_weights()  # buffers (RoPE tables) on the real device
    model.load_state_dict(state)
    model = model.to(torch_dtype(dtype)).eval()

    tokenizer_dir = find_tokenizer_dir(*search)
    tokenizer = None
    stop_ids = _eos_ids(path) if _is_hf_dir(path) else []
    pad_id = 0
    if tokenizer_dir is not None and (tokenizer_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(os.fspath(tokenizer_dir / "tokenizer.json"))
        specials = special_tokens(tokenizer_dir)
        if not stop_ids and specials.eos is not None:
            stop_ids = [specials.eos[1]]
        if specials.pad is not None:
            pad_id = specials.pad[1]
    return LoadedModel(model, tokenizer, stop_ids, pad_id, tokenizer_dir if tokenizer is not None else None)
