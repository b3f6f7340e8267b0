"""What one Hugging Face family is: the contract between a family module (model/hf/families/), the registry that
picks one (model/hf/registry.py) and the tensor renaming (model/hf/weights.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from model.config import ModelConfig
from model.hf.common import Rule

if TYPE_CHECKING:
    import torch


@dataclass
class TensorNames:
    """How one family names its decoder tensors (model/hf/weights.py builds the rename rules from this)."""

    fused_qkv: bool = False  # Phi-3: q, k, v in one qkv_proj
    fused_gate_up: bool = False  # Phi-3: gate and up in one gate_up_proj
    moe_prefix: str = "mlp"  # Mixtral: block_sparse_moe
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # Loom w1, w3, w2
    shared_name: str = "shared_experts"  # Qwen2-MoE: shared_expert
    bias_name: str | None = None  # the selection-bias tensor under the MoE prefix
    bias_2d: bool = False  # ERNIE stores it as [1, E]
    interleaved_rope: bool = False  # q/k rotary rows stored as interleaved pairs (permuted on conversion)
    # The config.json key by which a checkpoint says whether its rotary rows are interleaved (DeepSeek-V3:
    # rope_interleave); a checkpoint without the key has the family's `interleaved_rope` layout.
    interleave_key: str | None = None
    # DeepSeek-V3: multi-token-prediction modules stored as layers n_layers, n_layers + 1, ... (enorm, hnorm,
    # eh_proj, shared_head.norm beside the decoder layer's own tensors, plus copies of the embedding and head)
    mtp_layers: bool = False


@dataclass
class OwnLayout:
    """Tensors laid out unlike transformers' RoPE decoders (`model.layers.<i>.self_attn...`; GPT-2's
    `transformer.h.<i>.attn.c_attn...`): the family gives every rename rule itself, and the renaming of other
    spellings of its state dict (older conversions, in-memory names) to the on-disk names its rules read."""

    rules: Callable[[ModelConfig], list[Rule]]
    normalise: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class Family:
    """One transformers `model_type` Loom computes exactly.

    `problems`: why a Loom config cannot be this family (empty: it can); `to_hf`: its config.json fields;
    `from_hf`: the Loom config of a config.json of this type; `names` (or `layout`): how its tensors are named.
    `matches` and `priority` say which configs export to this family when no model_type is asked for: the
    registry tries the families from the highest priority down and takes the first whose `matches` holds, so a
    predicate only needs to tell its family apart from those of lower priority (the more specific architecture
    gets the higher priority; a catch-all gets the lowest). Priorities are unique, so the choice never depends on
    the order in which the family modules were found."""

    model_type: str
    architecture: str
    problems: Callable[[ModelConfig], list[str]]
    to_hf: Callable[[ModelConfig], dict]
    from_hf: Callable[[dict, str], ModelConfig]
    matches: Callable[[ModelConfig], bool]
    priority: int
    names: TensorNames = field(default_factory=TensorNames)
    layout: OwnLayout | None = None  # None: the RoPE decoder layout model/hf/weights.py builds from `names`
