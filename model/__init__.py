"""Loom's model: `build(cfg)` turns a ModelConfig into a plain-PyTorch decoder (see transformer.py)."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from typing import TYPE_CHECKING

from model.config import ModelConfig, MoEConfig, RopeScalingConfig, validate_model_config

if TYPE_CHECKING:
    from model.transformer import Transformer


def __getattr__(name: str):
    # torch is imported on first use of the model, not by `import model.config`: the launcher validates a config
    # (and rejects a bad one) before paying torch's ~1.5 s import.
    if name == "Transformer":
        from model.transformer import Transformer

        return Transformer
    raise AttributeError(f"module 'model' has no attribute {name!r}")


def _as_model_config(cfg: Any) -> ModelConfig:
    """Accept a ModelConfig, a plain dict or an OmegaConf/Hydra node, with nested sections as dicts or dataclasses."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_object(cfg)
    except ImportError:  # omegaconf is a dependency, but build() itself does not need it
        pass
    if isinstance(cfg, dict):
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown}; valid keys: {sorted(known)}")
        cfg = ModelConfig(**cfg)
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build() needs a ModelConfig (or dict / DictConfig), got {type(cfg).__name__}")
    if isinstance(cfg.rope_scaling, dict):
        cfg.rope_scaling = RopeScalingConfig(**cfg.rope_scaling)
    if isinstance(cfg.moe, dict):
        cfg.moe = MoEConfig(**cfg.moe)
    validate_model_config(cfg)
    return cfg


def build(cfg: Any) -> "Transformer":
    """ModelConfig -> initialised Transformer on the current default device. Under `torch.device("meta")`
    nothing is allocated: `to_empty(device=...)` then `init_weights()` materialise it."""
    from model.transformer import Transformer

    model = Transformer(_as_model_config(cfg))
    model.init_weights()  # a no-op on the meta device; call it again after `to_empty`
    return model


__all__ = ["build", "Transformer", "ModelConfig", "MoEConfig", "RopeScalingConfig"]
