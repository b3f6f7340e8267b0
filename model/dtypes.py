"""The one table of floating-point precisions Loom knows, and their one spelling: fp32 | bf16 | fp16.

Every config key that names a dtype (trainer.precision, parallel.fsdp_param_dtype, parallel.fsdp_reduce_dtype,
`model.hf export --dtype`) takes these names; torch's long names (float32, bfloat16, float16) are accepted as
aliases and normalised here, so no other module keeps a table of its own. Importing this module does not import
torch (configs are checked before torch loads).
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Bytes per element, for sizing; fp8 is sized (the estimator, float8 matmuls) but is no training precision.
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


def canonical_precision(name: str, key: str = "precision") -> str:
    """`name` in Loom's spelling (an alias becomes its short name); ValueError naming `key` otherwise."""
    short = _ALIASES.get(name, name)
    if short not in PRECISIONS:
        raise ValueError(
            f"{key}={name!r} is not one of {list(PRECISIONS)} (torch's long names {sorted(_ALIASES)} are accepted too)"
        )
    return short


def dtype_bytes(name: str, key: str = "dtype") -> int:
    """Bytes per element of a precision name (either spelling, or fp8); ValueError naming `key` otherwise."""
    if name == "fp8":
        return BYTES["fp8"]
    try:
        return BYTES[canonical_precision(name, key)]
    except ValueError as exc:
        raise ValueError(f"{exc}, or fp8") from None


def torch_dtype(name: str):
    """The torch dtype of a precision name (either spelling)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[canonical_precision(name)]
