"""`trainer.init_from=<Hugging Face model directory>`: a run starting from an HF model, imported on the fly.

With such a directory (config.json + safetensors, not a Loom checkpoint) the run's `model` becomes the directory's
architecture (model.hf's import, before validation, so config.yaml and the checkpoints record it); only the keys
that say how to train it, not what it is (`RUN_KEYS`: model.lora, fused projections, attention backend, loss
chunking, document masking, logit padding), keep this config's values. Its weights fill the model through
`load_hf_weights` (every layout: full tensors into whatever shards a rank holds), adapters staying as initialised.
Its tokenizer serves the run's text samples and evaluation when the data brings none (synthetic data), and is
copied into the run directory for exports and model.generate.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

RUN_KEYS = (
    "lora",
    "fused_projections",
    "attention_backend",
    "loss_chunk_size",
    "document_mask_eos_id",
    "vocab_multiple",
)


def hf_init_dir(init_from: Optional[str | os.PathLike]) -> Optional[Path]:
    """`init_from` when it is a Hugging Face model directory (config.json, no Loom checkpoint files), else None."""
    if not init_from:
        return None
    from model.loading import _is_hf_dir, _is_loom_checkpoint

    path = Path(init_from)
    return path if path.is_dir() and _is_hf_dir(path) and not _is_loom_checkpoint(path) else None


def adopt_hf_model(cfg: Any) -> Any:
    """The composed config (a DictConfig) with `model` replaced by trainer.init_from's HF architecture, the
    RUN_KEYS kept; unchanged when init_from is not an HF directory. ConfigError naming trainer.init_from when
    the directory cannot be imported."""
    from omegaconf import OmegaConf

    from launcher.validation import ConfigError

    directory = hf_init_dir(OmegaConf.select(cfg, "trainer.init_from"))
    if directory is None:
        return cfg
    from model.hf.common import HFConversionError
    from model.hf.convert import model_config_from_hf
    from model.hf.files import read_hf_config

    try:
        imported = model_config_from_hf(read_hf_config(directory), name=directory.resolve().name)
    except (HFConversionError, ValueError) as exc:
        raise ConfigError(f"trainer.init_from={directory}: cannot import this Hugging Face model: {exc}") from exc
    current = OmegaConf.to_container(cfg.model, resolve=True)
    model = dataclasses.asdict(imported) | {key: current[key] for key in RUN_KEYS}
    cfg.model = OmegaConf.merge(OmegaConf.structured(type(imported)), model)
    log.info("trainer.init_from=%s: model %s imported from Hugging Face", directory, imported.name)
    return cfg


def load_hf_weights(modules: list, directory: Path) -> None:
    """The HF directory's weights into `modules` (one model or a pipeline rank's stages, in any layout): every
    tensor the modules hold but their LoRA adapters must come from the directory."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    from model.hf import read_hf_model
    from model.lora import is_adapter_key

    state, _ = read_hf_model(directory)
    for module in modules:
        own = [key for key in get_model_state_dict(module) if not is_adapter_key(key)]
        missing = [key for key in own if key not in state]
        if missing:
            raise ValueError(f"trainer.init_from={directory}: the model has no tensors {missing[:4]} there")
        set_model_state_dict(
            module, {key: state[key] for key in own}, options=StateDictOptions(full_state_dict=True, strict=False)
        )
    log.info("initialised model weights from the Hugging Face model %s", directory)


def hf_tokenizer(directory: Path) -> tuple[Any, Optional[int]]:
    """(tokenizers.Tokenizer, eos id) of the HF directory, or (None, None) when it has no tokenizer.json."""
    from model.hf.files import special_tokens

    path = directory / "tokenizer.json"
    if not path.is_file():
        return None, None
    from tokenizers import Tokenizer

    specials = special_tokens(directory)
    return Tokenizer.from_file(os.fspath(path)), specials.eos[1] if specials.eos is not None else None
