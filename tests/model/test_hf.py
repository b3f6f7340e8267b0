"""Hugging Face interop: logits of exported / imported tiny random models equal the other side's (fp32, 1e-4)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from model import build
from model.checkpoint_io import load_model_checkpoint, save_model_checkpoint
from model.config import ModelConfig, MoEConfig, RopeScalingConfig
from model.hf import (
    SAFETENSORS_INDEX,
    HFConversionError,
    export_checkpoint,
    hf_model_type,
    import_checkpoint,
    write_hf_dir,
)
from model.hf.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
TINY = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
CONFIGS = {
    # Llama 3.x style: GQA, tied, llama3 RoPE scaling whose original context (16) is shorter than the test sequence.
    "llama": ModelConfig(
        name="llama",
        **TINY,
        n_kv_heads=2,
        hidden_dim=96,
        norm_eps=1e-5,
        tie_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=RopeScalingConfig(type="llama3", factor=4.0, original_max_seq_len=16),
    ),
    # Mistral: MQA and a sliding window (5) much shorter than the test sequence (24), so it changes the logits.
    "mistral": ModelConfig(name="mistral", **TINY, n_kv_heads=1, hidden_dim=96, sliding_window=5),
    "gpt2": ModelConfig(
        name="gpt2",
        **TINY,
        norm_type="layernorm",
        norm_bias=True,
        pos_embedding="learned",
        qkv_bias=True,
        attn_out_bias=True,
        mlp_type="gelu",
        mlp_bias=True,
        tie_embeddings=True,
    ),
    # Llama with every bias on and a head_dim that is not dim / n_heads (q/o project 64 <-> 4*32).
    "llama_biases_headdim": ModelConfig(
        name="llama_b", **TINY, head_dim=32, hidden_dim=80, qkv_bias=True, attn_out_bias=True, mlp_bias=True
    ),
    "mixtral": ModelConfig(
        name="mixtral", **TINY, n_kv_heads=2, hidden_dim=48, rope_theta=1e6, moe=MoEConfig(num_experts=4, top_k=2)
    ),
}
EXPECTED_CLASS = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "mixtral": "MixtralForCausalLM",
}


def random_loom_model(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, norms and biases included, so a swapped or missing tensor cannot hide."""
    torch.manual_seed(seed)
    model = build(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(seed))


def load_hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_logits_match_transformers(name: str, tmp_path: Path) -> None:
    cfg, kind = CONFIGS[name], name.split("_")[0]
    assert hf_model_type(cfg) == kind
    ours = random_loom_model(cfg)
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "run" / "checkpoints" / "step_00000007")
    export_checkpoint(tmp_path / "run", tmp_path / "hf")  # a run dir: its newest complete checkpoint
    reference = load_hf(tmp_path / "hf")
    assert type(reference).__name__ == EXPECTED_CLASS[kind]
    with torch.no_grad():
        ours_logits, ref_logits = ours(tokens()), reference(tokens()).logits
    assert (ours_logits - ref_logits).abs().max().item() <= TOL
    if kind == "mistral":  # the window really mattered: full causal attention gives other logits
        full = build(dataclasses.replace(cfg, sliding_window=None)).eval()
        full.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert (full(tokens()) - ref_logits)[:, 6:].abs().max().item() > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_import_logits_match_transformers(name: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from model.hf import hf_config_dict

    kind = name.split("_")[0]
    hf_cfg = transformers.AutoConfig.for_model(**hf_config_dict(CONFIGS[name], torch.float32))
    torch.manual_seed(3)
    reference = AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    reference.save_pretrained(tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    state, cfg = load_model_checkpoint(tmp_path / "ckpt")
    assert hf_model_type(cfg) == kind
    ours = build(cfg).eval()
    ours.load_state_dict(state)
    with torch.no_grad():
        assert (ours(tokens()) - reference(tokens()).logits).abs().max().item() <= TOL


def test_import_fused_mixtral_experts_and_sharded_files(tmp_path: Path) -> None:
    """transformers 5.x's in-memory Mixtral layout (gate_up_proj [E, 2I, D], down_proj [E, D, I]) written as-is,
    split over several safetensors files with an index, imports to the same logits."""
    from transformers import AutoModelForCausalLM

    from model.hf import hf_config_dict

    config = hf_config_dict(CONFIGS["mixtral"], torch.float32)
    torch.manual_seed(4)
    reference = AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config)).eval()
    fused = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    assert fused["model.layers.0.mlp.experts.gate_up_proj"].shape == (4, 2 * 48, 64)
    write_hf_dir(fused, config, tmp_path / "hf", max_shard_bytes=200_000)
    assert (tmp_path / "hf" / SAFETENSORS_INDEX).is_file()
    import_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    state, cfg = load_model_checkpoint(tmp_path / "ckpt")
    ours = build(cfg).eval()
    ours.load_state_dict(state)
    with torch.no_grad():
        assert (ours(tokens()) - reference(tokens()).logits).abs().max().item() <= TOL


def test_round_trip_through_cli_with_sharding_and_bf16(tmp_path: Path) -> None:
    cfg = CONFIGS["llama"]
    ours = random_loom_model(cfg, seed=5)
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--max-shard-gb", "0.0001"]) == 0
    index = json.loads((tmp_path / "hf" / SAFETENSORS_INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2  # exists: refused
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--overwrite", "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    state, back_cfg = load_model_checkpoint(tmp_path / "back")
    assert back_cfg.rope_scaling.type == "llama3" and back_cfg.tie_embeddings and back_cfg.kv_heads == 2
    for key, value in ours.state_dict().items():
        assert torch.equal(state[key], value.to(torch.bfloat16)), key


@pytest.mark.parametrize(
    "overrides, reason",
    [
        (dict(pos_embedding="alibi"), "alibi"),
        (dict(qk_norm=True, qk_norm_scope="full"), "qwen3 needs qk_norm_scope='head'"),
        (dict(norm_position="sandwich"), "gemma2 needs rmsnorm_unit_offset=True"),
        (dict(norm_position="post"), "norm_position"),
        (dict(attn_logit_softcap=30.0), "softcap"),
        (dict(qkv_bias=True, mlp_bias=True), "qwen2 needs mlp_bias=False"),
        (dict(rope_scaling=RopeScalingConfig(type="ntk", factor=2.0)), "ntk"),
        (
            dict(moe=MoEConfig(num_experts=4, top_k=2, num_shared_experts=1, norm_topk_prob=False)),
            "ernie4_5_moe needs moe.norm_topk_prob=True",
        ),
        (dict(moe=MoEConfig(num_experts=4, top_k=2, score_func="sigmoid")), "mixtral needs moe.score_func"),
        (dict(mla=dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8)), "set model.moe"),
        (dict(mlp_type="gelu"), "GPT-2 export needs"),
    ],
)
def test_unrepresentable_configs_are_refused(overrides: dict, reason: str) -> None:
    cfg = ModelConfig(**{**TINY, **overrides})
    with pytest.raises(HFConversionError, match=reason):
        hf_model_type(cfg)


def test_import_refuses_unknown_architecture(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(HFConversionError, match="model_type='bert'"):
        import_checkpoint(tmp_path / "hf", tmp_path / "ckpt")


@pytest.mark.parametrize(
    "scaling",
    [
        RopeScalingConfig(type="linear", factor=2.0),
        RopeScalingConfig(type="yarn", factor=4.0, original_max_seq_len=16, mscale=0.7),
    ],
    ids=["linear", "yarn"],
)
def test_rope_scalings_export_and_import(scaling: RopeScalingConfig, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CONFIGS["llama"], rope_scaling=scaling, rope_theta=10000.0)
    ours = random_loom_model(cfg)
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    with torch.no_grad():
        assert (ours(tokens()) - load_hf(tmp_path / "hf")(tokens()).logits).abs().max().item() <= TOL
    import_checkpoint(tmp_path / "hf", tmp_path / "back")
    _, back = load_model_checkpoint(tmp_path / "back")
    assert back.rope_scaling.type == scaling.type
    assert back.rope_scaling.factor == pytest.approx(scaling.factor)
    assert back.rope_scaling.cos_sin_factor == pytest.approx(scaling.cos_sin_factor)


def test_import_original_gpt2_naming(tmp_path: Path) -> None:
    """The OpenAI-converted GPT-2 files name tensors without "transformer." and carry causal-mask buffers."""
    from transformers import AutoModelForCausalLM

    from model.hf import hf_config_dict

    config = hf_config_dict(CONFIGS["gpt2"], torch.float32)
    torch.manual_seed(6)
    reference = AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**config)).eval()
    state = {
        k.removeprefix("transformer."): v.detach().clone()
        for k, v in reference.state_dict().items()
        if k != "lm_head.weight"
    }
    for i in range(CONFIGS["gpt2"].n_layers):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    write_hf_dir(state, config, tmp_path / "hf")
    import_checkpoint(tmp_path / "hf", tmp_path / "ckpt")
    loaded, cfg = load_model_checkpoint(tmp_path / "ckpt")
    ours = build(cfg).eval()
    ours.load_state_dict(loaded)
    with torch.no_grad():
        assert (ours(tokens()) - reference(tokens()).logits).abs().max().item() <= TOL


def test_loom_moe_config_exports_to_the_hf_class_with_shared_experts(tmp_path: Path) -> None:
    """configs/model/moe.yaml (ungated shared expert, softmax top-2 renormalised, first layer dense) is ERNIE 4.5
    MoE's architecture: exported, transformers loads it with no missing or unexpected key and equal logits."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    yaml = Path(__file__).resolve().parents[2] / "configs" / "model" / "moe.yaml"
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(yaml)))
    assert hf_model_type(cfg) == "ernie4_5_moe"
    ours = random_loom_model(dataclasses.replace(cfg, n_layers=2))
    save_model_checkpoint(ours.state_dict(), ours.cfg, tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    reference, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(reference).__name__ == "Ernie4_5_MoeForCausalLM" and not any(info.values()), info
    batch = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (ours(batch) - reference.eval()(batch).logits).abs().max().item() <= TOL
