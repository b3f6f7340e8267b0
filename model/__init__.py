"""Loom's model: `build(cfg)` turns a ModelConfig into a plain-PyTorch decoder (see transformer.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model.config import MLAConfig, ModelConfig, MoEConfig, RopeScalingConfig

if TYPE_CHECKING:
    from model.transformer import Transformer


def __getattr__(name: str):
    # torch is imported on first use of the model, not by `import model.config`: the launcher validates a config
    # (and rejects a bad one) before paying torch's ~1.5 s import.
    if name == "Transformer":
        from model.transformer import Transformer

        return Transformer
    raise AttributeError(f"module 'model' has no attribute {name!r}")


def build(cfg: Any) -> "Transformer":
    """ModelConfig (or a dict / Hydra node of one, see ModelConfig.coerce) -> initialised Transformer on the current
    default device. Under `torch.device("meta")` nothing is allocated: `to_empty(device=...)` then `init_weights()`
    materialise it."""
    from model.transformer import Transformer

    model = Transformer(ModelConfig.coerce(cfg))
    model.init_weights()  # a no-op on the meta device; call it again after `to_empty`
    return model


__all__ = ["build", "Transformer", "ModelConfig", "MoEConfig", "MLAConfig", "RopeScalingConfig"]
