"""Hugging Face interop: Loom checkpoints to and from `transformers` directories (config.json + safetensors +
tokenizer files), for every family Loom computes exactly: Llama, Mistral, Mixtral, GPT-2, Qwen2/2.5, Qwen3,
Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, Gemma 2/3, OLMo 2, Phi-3 and ERNIE 4.5 MoE (Loom's own shared-expert MoE).

The family is picked from the config's features (model/hf/registry.py); anything the family's transformers class
cannot compute identically is refused with the reason, never exported approximately. Parts: common.py (errors,
rename rules), rope.py, family.py (what a family declares), registry.py (finds the families, picks one),
families/ (one module per family: its config mapping and how it recognises a config), family_kit.py (what the
families share), weights.py (tensor names), files.py (directory layout and tokenizer files), convert.py (export,
import, CLI).

CLI:  python -m model.hf export <checkpoint_or_run_dir> <hf_dir> [--dtype bfloat16] [--overwrite]
      python -m model.hf import <hf_dir> <checkpoint_dir>
"""

from model.hf.common import DEFAULT_MAX_SHARD_BYTES, SAFETENSORS_FILE, SAFETENSORS_INDEX, HFConversionError
from model.hf.convert import (
    check_against_model,
    export_checkpoint,
    hf_config_dict,
    hf_model_type,
    import_checkpoint,
    model_config_from_hf,
    read_hf_model,
)
from model.hf.files import read_hf_config, read_hf_weights, write_hf_dir

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX",
    "HFConversionError",
    "check_against_model",
    "export_checkpoint",
    "hf_config_dict",
    "hf_model_type",
    "import_checkpoint",
    "model_config_from_hf",
    "read_hf_model",
    "read_hf_config",
    "read_hf_weights",
    "write_hf_dir",
]
