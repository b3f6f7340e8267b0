"""A Loom model's LoRA adapters as a peft adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
that `peft.PeftModel.from_pretrained(<the HF export of the base>, dir)` loads.

peft names each adapter after the transformers module it wraps: `base_model.model.<module>.lora_A.weight` [r, in]
and `...lora_B.weight` [out, r]. The module is the HF name of the adapted Linear's weight (model/hf/weights.py's
rules). A rule that only renames or reorders rows (interleaved RoPE) applies to B's rows as to the weight's; a
projection stored fused or transposed in HF (Phi-3's qkv_proj/gate_up_proj, GPT-2's Conv1D) has no such
adapter, and is refused (export --lora merged instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from model.config import ModelConfig
from model.hf.common import HFConversionError
from model.hf.family import Family
from model.hf.files import staged_dir
from model.hf.weights import weight_rules
from model.lora import adapter_bases

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def peft_adapter_state(state: dict[str, torch.Tensor], cfg: ModelConfig, fam: Family) -> dict[str, torch.Tensor]:
    """peft's tensor names -> tensors for every adapter in a Loom state dict."""
    by_weight = {rule.loom[0]: rule for rule in weight_rules(cfg, fam) if len(rule.loom) == 1 and len(rule.hf) == 1}
    out: dict[str, torch.Tensor] = {}
    for base in adapter_bases(state):
        rule = by_weight.get(f"{base}.weight")
        lora_a, lora_b = state[f"{base}.lora_A"], state[f"{base}.lora_B"]
        probe = torch.zeros(lora_b.shape[0], lora_b.shape[0] + 1)
        if rule is None or tuple(rule.to_hf([probe])[0].shape) != tuple(probe.shape):
            raise HFConversionError(
                f"{base}: {fam.model_type} stores this projection fused or transposed, so peft has no adapter for "
                f"it; export with --lora merged, or leave its target out of model.lora.targets"
            )
        module = rule.hf[0].removesuffix(".weight")
        out[f"base_model.model.{module}.lora_A.weight"] = lora_a.contiguous()
        out[f"base_model.model.{module}.lora_B.weight"] = rule.to_hf([lora_b])[0].contiguous()
    if not out:
        raise HFConversionError("the checkpoint holds no LoRA adapters (model.lora.rank is 0)")
    return out


def peft_adapter_config(cfg: ModelConfig, modules: list[str]) -> dict:
    """adapter_config.json: peft's LoraConfig fields for these adapters, targeting exactly the adapted modules."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "base_model_name_or_path": None,
    }


def write_peft_adapter(
    state: dict[str, torch.Tensor], cfg: ModelConfig, fam: Family, out_dir: str | os.PathLike, *, overwrite: bool
) -> Path:
    """The adapter directory, written into a temporary sibling and renamed into place."""
    tensors = peft_adapter_state(state, cfg, fam)
    modules = sorted({key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for key in tensors})
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(peft_adapter_config(cfg, modules), indent=2))
    return Path(out_dir)
