"""Tensor names between Loom's state dict and each family's safetensors, as a table of rename rules.

The rules are written here rather than taken from a library because they are a rename table over two specific
layouts: ours (model/transformer.py) and transformers' on-disk format. What is more than a rename:
- fused tensors: Phi-3's qkv_proj / gate_up_proj (GPT-2's c_attn, with its Conv1D [in, out] layout, is
  model/hf/families/gpt2.py's own layout);
- routed experts: stored per expert on disk (`experts.<e>.gate_proj.weight`, Mixtral `w1`), stacked [E, ...] in
  Loom. transformers 5.x holds them fused in memory (`experts.gate_up_proj` [E, 2I, D], `down_proj` [E, D, I]),
  and a state dict saved from memory is read too (`normalise_hf_state`);
- interleaved RoPE (DeepSeek's rotary part of q and of the shared key, ERNIE's whole heads): those rows are
  permuted to Loom's halves layout on import and back on export (model/hf/common.py interleaved_to_halves);
- selection biases ERNIE stores as [1, E];
- DeepSeek-V3's multi-token-prediction modules, stored as the layers after the last one with copies of the
  embedding and head that Loom shares (written on export, checked and dropped on import). A family with no place
  for them exports the main model and says that it left them out.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from model.blocks.moe import EXPERT_WEIGHTS
from model.config import ModelConfig
from model.hf.common import HFConversionError, Rule, apply_rules, permuted, same, split_rows
from model.hf.family import Family, TensorNames

log = logging.getLogger(__name__)

_NORM_NAMES = {  # Loom block norm -> transformers name, per norm placement
    "pre": {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"},
    "sandwich": {
        "attention_norm": "input_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffn_norm": "post_feedforward_layernorm",
    },
    "branch_output": {"post_attention_norm": "post_attention_layernorm", "post_ffn_norm": "post_feedforward_layernorm"},
}


def _linear(hf: str, loom: str, bias: bool) -> list[Rule]:
    return [same(f"{hf}.weight", f"{loom}.weight")] + ([same(f"{hf}.bias", f"{loom}.bias")] if bias else [])


def _rotary(hf: str, loom: str, bias: bool, block: int, start: int, width: int, interleaved: bool) -> list[Rule]:
    if not interleaved:
        return _linear(hf, loom, bias)
    rules = [permuted(f"{hf}.weight", f"{loom}.weight", block, start, width)]
    return rules + ([permuted(f"{hf}.bias", f"{loom}.bias", block, start, width)] if bias else [])


def _attention_rules(cfg: ModelConfig, names: TensorNames, h: str, loom: str, interleaved: bool) -> list[Rule]:
    hd, q_dim, kv_dim = cfg.attn_head_dim, cfg.n_heads * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    if names.fused_qkv:
        rules = [
            split_rows(
                f"{h}qkv_proj.weight",
                (f"{loom}wq.weight", f"{loom}wk.weight", f"{loom}wv.weight"),
                [q_dim, kv_dim, kv_dim],
            )
        ]
        if cfg.qkv_bias:
            rules.append(
                split_rows(
                    f"{h}qkv_proj.bias", (f"{loom}wq.bias", f"{loom}wk.bias", f"{loom}wv.bias"), [q_dim, kv_dim, kv_dim]
                )
            )
    else:
        rules = (
            _rotary(f"{h}q_proj", f"{loom}wq", cfg.qkv_bias, hd, 0, hd, interleaved)
            + _rotary(f"{h}k_proj", f"{loom}wk", cfg.qkv_bias, hd, 0, hd, interleaved)
            + _linear(f"{h}v_proj", f"{loom}wv", cfg.qkv_bias)
        )
    rules += _linear(f"{h}o_proj", f"{loom}wo", cfg.attn_out_bias)
    if cfg.qk_norm:
        rules += [same(f"{h}q_norm.weight", f"{loom}q_norm.weight"), same(f"{h}k_norm.weight", f"{loom}k_norm.weight")]
    return rules


def _mla_rules(cfg: ModelConfig, h: str, loom: str, interleaved: bool) -> list[Rule]:
    mla = cfg.mla
    qk, nope, rope, rank = mla.qk_head_dim, mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.kv_lora_rank
    if mla.q_lora_rank is None:
        rules = _rotary(f"{h}q_proj", f"{loom}wq", False, qk, nope, rope, interleaved)
    else:
        rules = (
            _linear(f"{h}q_a_proj", f"{loom}wq_a", cfg.qkv_bias)
            + [same(f"{h}q_a_layernorm.weight", f"{loom}q_a_norm.weight")]
            + _rotary(f"{h}q_b_proj", f"{loom}wq_b", False, qk, nope, rope, interleaved)
        )
    rules += _rotary(f"{h}kv_a_proj_with_mqa", f"{loom}wkv_a", cfg.qkv_bias, rank + rope, rank, rope, interleaved)
    rules += [same(f"{h}kv_a_layernorm.weight", f"{loom}kv_a_norm.weight")]
    rules += _linear(f"{h}kv_b_proj", f"{loom}wkv_b", False) + _linear(f"{h}o_proj", f"{loom}wo", cfg.attn_out_bias)
    return rules


def _mlp_rules(names: TensorNames, h: str, loom: str, hidden: int, bias: bool, gated: bool = True) -> list[Rule]:
    if names.fused_gate_up:
        rules = [split_rows(f"{h}gate_up_proj.weight", (f"{loom}w1.weight", f"{loom}w3.weight"), [hidden, hidden])]
        return rules + _linear(f"{h}down_proj", f"{loom}w2", bias)
    rules = _linear(f"{h}gate_proj", f"{loom}w1", bias) + _linear(f"{h}down_proj", f"{loom}w2", bias)
    return rules + (_linear(f"{h}up_proj", f"{loom}w3", bias) if gated else [])


def _moe_rules(cfg: ModelConfig, names: TensorNames, h: str, loom: str) -> list[Rule]:
    moe = cfg.moe
    rules = [same(f"{h}gate.weight", f"{loom}router.weight")]
    for ours, theirs in zip(EXPERT_WEIGHTS, names.expert_names):
        per_expert = tuple(f"{h}experts.{e}.{theirs}.weight" for e in range(moe.num_experts))
        rules.append(
            Rule(
                per_expert,
                (f"{loom}experts.{ours}",),
                lambda ts: [t.clone() for t in ts[0].unbind(0)],
                lambda ts: [torch.stack(ts)],
            )
        )
    if moe.num_shared_experts:
        plain = TensorNames()
        rules += _mlp_rules(
            plain, f"{h}{names.shared_name}.", f"{loom}shared_experts.", cfg.shared_experts_hidden_dim, False
        )
    if moe.shared_expert_gate:
        rules.append(same(f"{h}shared_expert_gate.weight", f"{loom}shared_expert_gate.weight"))
    if names.bias_name is not None:
        if names.bias_2d:
            rules.append(
                Rule(
                    (f"{h}{names.bias_name}",),
                    (f"{loom}expert_bias",),
                    lambda ts: [ts[0].reshape(1, -1)],
                    lambda ts: [ts[0].reshape(-1)],
                )
            )
        else:
            rules.append(same(f"{h}{names.bias_name}", f"{loom}expert_bias"))
    return rules


def weight_rules(cfg: ModelConfig, fam: Family, *, interleaved: Optional[bool] = None) -> list[Rule]:
    """Every rule of `cfg`'s tensors in family `fam`; `interleaved` overrides the family's RoPE row layout
    (DeepSeek-V3 checkpoints say which in config.json: rope_interleave)."""
    if fam.layout is not None:
        return fam.layout.rules(cfg)
    names = fam.names
    interleaved = names.interleaved_rope if interleaved is None else interleaved
    rules = [same("model.embed_tokens.weight", "tok_embeddings.weight"), same("model.norm.weight", "norm.weight")]
    if not cfg.tie_embeddings:
        rules.append(same("lm_head.weight", "output.weight"))
    for k in range(_mtp_depth(cfg, fam)):
        h, loom = f"model.layers.{cfg.n_layers + k}.", f"mtp.{k}."
        rules += [
            same(f"{h}enorm.weight", f"{loom}embedding_norm.weight"),
            same(f"{h}hnorm.weight", f"{loom}hidden_norm.weight"),
            same(f"{h}eh_proj.weight", f"{loom}projection.weight"),
            same(f"{h}shared_head.norm.weight", f"{loom}norm.weight"),
        ]
    for i, loom in _loom_layers(cfg, fam):
        h = f"model.layers.{i}."
        rules += [
            same(f"{h}{theirs}.weight", f"{loom}{ours}.weight")
            for ours, theirs in _NORM_NAMES[cfg.norm_position].items()
        ]
        if cfg.mla is not None:
            rules += _mla_rules(cfg, f"{h}self_attn.", f"{loom}attention.", interleaved)
        else:
            rules += _attention_rules(cfg, names, f"{h}self_attn.", f"{loom}attention.", interleaved)
        if cfg.is_moe_layer(i):
            rules += _moe_rules(cfg, names, f"{h}{names.moe_prefix}.", f"{loom}moe.")
        else:
            rules += _mlp_rules(names, f"{h}mlp.", f"{loom}feed_forward.", cfg.ffn_hidden_dim, cfg.mlp_bias)
    return rules


def _mtp_depth(cfg: ModelConfig, fam: Family) -> int:
    """How many multi-token-prediction modules the family's files hold for `cfg`."""
    return cfg.mtp_depth if fam.names.mtp_layers else 0


def _loom_layers(cfg: ModelConfig, fam: Family) -> list[tuple[int, str]]:
    """(HF layer index, Loom prefix) of every decoder layer the files hold: the model's, then the MTP modules'."""
    return [(i, f"layers.{i}.") for i in range(cfg.n_layers)] + [
        (cfg.n_layers + k, f"mtp.{k}.block.") for k in range(_mtp_depth(cfg, fam))
    ]


def loom_to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, fam: Family) -> dict[str, torch.Tensor]:
    state = dict(state)
    if cfg.mtp_depth and not fam.names.mtp_layers:
        left_out = [k for k in state if k.startswith("mtp.")]
        log.warning(
            "%s has no place for multi-token-prediction modules: exporting the main model without the "
            "%d MTP tensors (%d parameters); they only train",
            fam.model_type,
            len(left_out),
            sum(state[k].numel() for k in left_out),
        )
        state = {k: v for k, v in state.items() if k not in left_out}
    if fam.names.bias_name is not None:  # the class always has the selection bias: a zero one selects the same
        for i, loom in _loom_layers(cfg, fam):
            key = f"{loom}moe.expert_bias"
            if cfg.is_moe_layer(i) and key not in state:
                state[key] = torch.zeros(cfg.moe.num_experts, dtype=torch.float32)
    rules = weight_rules(cfg, fam)
    used = {k for rule in rules for k in rule.loom}
    tied_output = {"output.weight"} if cfg.tie_embeddings else set()
    unexpected = sorted(set(state) - used - tied_output)
    if unexpected:
        raise HFConversionError(f"Loom state dict has tensors with no {fam.model_type} equivalent: {unexpected[:8]}")
    hf_state = apply_rules(rules, state, to_hf=True, where="Loom checkpoint")
    for k in range(_mtp_depth(cfg, fam)):  # as DeepSeek publishes them: each module with its own copies
        h, embedding = f"model.layers.{cfg.n_layers + k}.", hf_state["model.embed_tokens.weight"]
        hf_state[f"{h}embed_tokens.weight"] = embedding.clone()
        hf_state[f"{h}shared_head.head.weight"] = hf_state.get("lm_head.weight", embedding).clone()
    return hf_state


def normalise_hf_state(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, fam: Family) -> dict[str, torch.Tensor]:
    """A state dict as transformers keeps it in memory (fused experts, Mixtral's `mlp.` prefix, ERNIE's bias under
    the router), or another spelling a family with its own layout knows (GPT-2's OpenAI-converted names), renamed
    to the on-disk layout the rules read."""
    state = dict(hf_state)
    if fam.layout is not None:
        return fam.layout.normalise(state)
    names = fam.names
    if names.mtp_layers:
        _drop_mtp_copies(state, cfg)
    for i, _ in _loom_layers(cfg, fam):
        h, prefix = f"model.layers.{i}.", f"model.layers.{i}.{names.moe_prefix}."
        gate_up = state.pop(f"{h}mlp.experts.gate_up_proj", None)
        if gate_up is not None:
            down = state.pop(f"{h}mlp.experts.down_proj")
            gate, up = gate_up.chunk(2, dim=1)
            for e in range(gate_up.shape[0]):
                for name, tensor in zip(names.expert_names, (gate[e], up[e], down[e])):
                    state[f"{prefix}experts.{e}.{name}.weight"] = tensor.clone()
        if names.moe_prefix != "mlp" and f"{h}mlp.gate.weight" in state:
            state[f"{prefix}gate.weight"] = state.pop(f"{h}mlp.gate.weight")
        in_memory_bias = f"{h}mlp.gate.moe_statics.e_score_correction_bias"
        if in_memory_bias in state and names.bias_name is not None:
            state[f"{prefix}{names.bias_name}"] = state.pop(in_memory_bias)
    return state


def mtp_layers_in(hf_state: dict[str, torch.Tensor], n_layers: int) -> int:
    """The multi-token-prediction modules a DeepSeek-V3 state dict holds: its layers from `n_layers` on."""
    depth = 0
    while any(k.startswith(f"model.layers.{n_layers + depth}.") for k in hf_state):
        depth += 1
    return depth


def _drop_mtp_copies(state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """Remove the MTP modules' copies of the embedding and head (Loom shares the model's), and every layer past
    the model and its `cfg.mtp_depth` modules."""
    for k in range(cfg.mtp_depth):
        h = f"model.layers.{cfg.n_layers + k}."
        for copy, shared in (
            (f"{h}embed_tokens.weight", "model.embed_tokens.weight"),
            (f"{h}shared_head.head.weight", "lm_head.weight"),
        ):
            tensor, reference = state.pop(copy, None), state.get(shared, state.get("model.embed_tokens.weight"))
            if tensor is not None and not torch.equal(tensor, reference):
                log.warning(
                    "%s differs from %s; Loom's multi-token-prediction modules share the model's, so the "
                    "copy is not used",
                    copy,
                    shared,
                )
    beyond = cfg.n_layers + cfg.mtp_depth
    for key in [k for k in state if k.startswith("model.layers.")]:
        if int(key.split(".")[2]) >= beyond:
            del state[key]


def hf_to_loom_state(
    hf_state: dict[str, torch.Tensor], cfg: ModelConfig, fam: Family, *, interleaved: Optional[bool] = None
) -> dict[str, torch.Tensor]:
    hf_state = normalise_hf_state(hf_state, cfg, fam)
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight", None)
    rules = weight_rules(cfg, fam, interleaved=interleaved)
    used = {k for rule in rules for k in rule.hf}
    unexpected = sorted(set(hf_state) - used)
    if unexpected:
        raise HFConversionError(
            f"HF checkpoint has tensors Loom's {fam.model_type} mapping does not know: {unexpected[:8]}"
        )
    state = apply_rules(rules, hf_state, to_hf=False, where="HF checkpoint")
    if cfg.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    return state
