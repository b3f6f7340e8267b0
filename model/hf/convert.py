"""Export a Loom checkpoint to a Hugging Face directory and import one back, and the command line for both.

CLI:  python -m model.hf export <checkpoint_or_run_dir> <hf_dir> [--dtype bfloat16] [--model-type T]
                                [--tokenizer DIR] [--overwrite] [--lora merged|adapter]
      python -m model.hf import <hf_dir> <checkpoint_dir> [--name NAME]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import torch

from model.config import ModelConfig
from model.dtypes import torch_dtype
from model.hf.common import DEFAULT_MAX_SHARD_BYTES, HFConversionError
from model.hf.files import (
    copy_tokenizer_files,
    find_tokenizer_dir,
    read_hf_config,
    read_hf_weights,
    write_hf_dir,
)
from model.hf.registry import family, family_for
from model.hf.weights import hf_to_loom_state, loom_to_hf_state, mtp_layers_in

LORA_EXPORTS = ("merged", "adapter")  # export --lora: the adapters folded into the weights, or a peft adapter dir


def hf_model_type(cfg: ModelConfig) -> str:
    """The transformers `model_type` that computes exactly what our model computes, or HFConversionError."""
    return family_for(ModelConfig.coerce(cfg)).model_type


def hf_config_dict(cfg: ModelConfig, dtype: torch.dtype = torch.float32, *, model_type: Optional[str] = None) -> dict:
    """config.json contents for `cfg` (fields for both transformers 5.x and 4.x readers), no token ids."""
    cfg = ModelConfig.coerce(cfg)
    fam = family_for(cfg, model_type)
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        **fam.to_hf(cfg),
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


def model_config_from_hf(hf: dict, *, name: str = "hf_import") -> ModelConfig:
    """ModelConfig computing what the HF architecture in `hf` (a config.json dict) computes."""
    return family(hf.get("model_type")).from_hf(hf, name)


def check_against_model(state: dict[str, torch.Tensor], cfg: ModelConfig, where: str) -> None:
    """Names and shapes must be exactly those of `model.build(cfg)` (built on the meta device: no memory)."""
    from model import build

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in sorted(set(expected) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(expected))]
    problems += [
        f"{k}: shape {got[k]} != {expected[k]}" for k in sorted(set(got) & set(expected)) if got[k] != expected[k]
    ]
    if problems:
        raise HFConversionError(f"{where} does not match the Loom model of its config: " + "; ".join(problems[:8]))


def read_hf_model(
    hf_dir: str | os.PathLike, *, name: Optional[str] = None
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Loom state dict and ModelConfig of a Hugging Face model directory."""
    hf_config = read_hf_config(hf_dir)
    cfg = model_config_from_hf(hf_config, name=name or Path(hf_dir).resolve().name)
    fam = family(hf_config["model_type"])
    key = fam.names.interleave_key  # the checkpoint may say how its rotary rows are laid out
    interleaved = hf_config.get(key, fam.names.interleaved_rope) if key is not None else None
    weights = read_hf_weights(hf_dir)
    if fam.names.mtp_layers:  # the modules the files hold (config.json may name one that was never saved)
        cfg = dataclasses.replace(cfg, mtp_depth=mtp_layers_in(weights, cfg.n_layers))
    state = hf_to_loom_state(weights, cfg, fam, interleaved=interleaved)
    check_against_model(state, cfg, f"{hf_dir}")
    return state, cfg


def export_checkpoint(
    checkpoint: str | os.PathLike,
    hf_dir: str | os.PathLike,
    *,
    dtype: Optional[str] = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    model_type: Optional[str] = None,
    tokenizer: Optional[str | os.PathLike] = None,
    lora: Optional[str] = None,
) -> Path:
    """Loom checkpoint (or run dir: its newest complete checkpoint) -> HF directory that
    `AutoModelForCausalLM.from_pretrained`, `AutoTokenizer.from_pretrained` and `pipeline("text-generation")`
    load as it is. The tokenizer is `tokenizer` (a directory or its tokenizer.json), else the one beside the
    checkpoint or in its run directory; without one the directory holds the model only.
    `dtype`: float32 | bfloat16 | float16 (default: as stored); `model_type`: force a transformers family.
    `lora` (a checkpoint with model.lora adapters needs it): "merged" writes the model with the adapters folded
    into its weights, "adapter" a peft adapter directory for the HF export of the base (model/hf/adapters.py)."""
    from model.checkpoint_io import load_model_checkpoint, resolve_checkpoint_dir
    from model.lora import merged_state

    state, cfg = load_model_checkpoint(checkpoint)
    check_against_model(state, cfg, f"checkpoint {checkpoint}")
    if cfg.lora.enabled and lora not in LORA_EXPORTS:
        raise HFConversionError(
            f"checkpoint {checkpoint} holds LoRA adapters (model.lora.rank={cfg.lora.rank}): pass --lora merged (the "
            f"model with the adapters folded in) or --lora adapter (a peft adapter directory)"
        )
    if lora is not None and not cfg.lora.enabled:
        raise HFConversionError(f"--lora {lora}: checkpoint {checkpoint} holds no LoRA adapters (model.lora.rank=0)")
    if lora == "adapter":
        from model.hf.adapters import write_peft_adapter

        return write_peft_adapter(
            state, cfg, family_for(merged_state(state, cfg)[1], model_type), hf_dir, overwrite=overwrite
        )
    if lora == "merged":
        state, cfg = merged_state(state, cfg)
    fam = family_for(cfg, model_type)
    hf_state = loom_to_hf_state(state, cfg, fam)
    if dtype is not None:
        try:
            target = torch_dtype(dtype)
        except ValueError as exc:
            raise HFConversionError(str(exc)) from exc
        hf_state = {k: v.to(target) for k, v in hf_state.items()}
    if tokenizer is not None:
        tokenizer_dir = Path(tokenizer).parent if Path(tokenizer).is_file() else Path(tokenizer)
        if find_tokenizer_dir(tokenizer_dir) != tokenizer_dir:
            raise HFConversionError(f"--tokenizer {tokenizer}: no tokenizer.json or tokenizer_config.json there")
    else:
        tokenizer_dir = find_tokenizer_dir(resolve_checkpoint_dir(checkpoint), checkpoint)
    out_dtype = next(iter(hf_state.values())).dtype
    return write_hf_dir(
        hf_state,
        hf_config_dict(cfg, out_dtype, model_type=fam.model_type),
        hf_dir,
        max_shard_bytes=max_shard_bytes,
        overwrite=overwrite,
        tokenizer_dir=tokenizer_dir,
    )


def import_checkpoint(
    hf_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, *, name: Optional[str] = None
) -> Path:
    """HF directory -> Loom model-only checkpoint (DCP {"model": ...} + model_config.json + COMPLETE), with the
    HF directory's tokenizer files kept beside it."""
    from model.checkpoint_io import save_model_checkpoint

    state, cfg = read_hf_model(hf_dir, name=name)
    return save_model_checkpoint(
        state, cfg, checkpoint_dir, add_files=lambda tmp: copy_tokenizer_files(Path(hf_dir), Path(tmp))
    )
