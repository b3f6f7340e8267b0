"""LoRA (model/lora.py) against peft: a Loom model with adapters gives the logits of transformers + peft with the
same adapter weights, exported by `model.hf export --lora adapter` and loaded with `PeftModel.from_pretrained`
(max abs <= 1e-5); `--lora merged` and model.lora.merged_state give those logits too; targets a family lacks are
refused naming model.lora.targets; only adapters train."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from family_configs import COMMON, VOCAB, hf_configs, randomise

from model import build
from model.checkpoint_io import save_model_checkpoint
from model.config import LoRAConfig
from model.hf import export_checkpoint, read_hf_model
from model.hf.common import HFConversionError
from model.lora import LoRALinear, merged_state, trainable_fraction

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TOL = 1e-5
MERGED_FP32_TOL = 5e-5  # merged weights are rounded to fp32 once: logits of magnitude ~10 move by ~1e-5
TOKENS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
TARGETS = {  # every target the family has
    "llama": ["q", "k", "v", "o", "gate", "up", "down"],
    "qwen2": ["q", "k", "v", "o", "gate", "up", "down"],
    "deepseek_v3": ["q", "o", "gate", "up", "down"],  # latent attention: no separate k/v
}


def _hf_config(name: str):
    if name == "llama":
        return transformers.LlamaConfig(**COMMON, num_key_value_heads=2)
    return hf_configs()[name]


def _hf_dir(name: str, root: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = randomise(transformers.AutoModelForCausalLM.from_config(_hf_config(name)), seed=11)
    model.save_pretrained(root / name)
    return model, root / name


def _loom_with_adapters(directory: Path, targets: list[str]) -> tuple[torch.nn.Module, object]:
    """The imported model with random (non-zero) adapters on `targets`."""
    state, cfg = read_hf_model(directory)
    cfg = dataclasses.replace(cfg, lora=LoRAConfig(rank=4, alpha=8.0, targets=targets))
    torch.manual_seed(5)
    model = build(cfg).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(k.endswith(("lora_A", "lora_B")) for k in missing)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_(0, 0.2)
    return model, cfg


@pytest.mark.parametrize("name", list(TARGETS))
def test_adapter_export_equals_peft_and_merged_equals_unmerged(name: str, tmp_path: Path) -> None:
    reference, directory = _hf_dir(name, tmp_path)
    ours, cfg = _loom_with_adapters(directory, TARGETS[name])
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "ckpt")
    adapter = export_checkpoint(tmp_path / "ckpt", tmp_path / "adapter", lora="adapter")
    assert {p.name for p in adapter.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4

    with torch.no_grad():
        logits, base_logits = ours(TOKENS), reference(TOKENS).logits
        assert (base_logits - logits).abs().max().item() > 1e-2  # the adapters matter
        peft_model = peft.PeftModel.from_pretrained(reference, adapter).eval()  # wraps `reference` in place
        peft_diff = (logits - peft_model(TOKENS).logits).abs().max().item()
        with peft_model.disable_adapter():
            assert torch.equal(peft_model(TOKENS).logits, base_logits)
    assert peft_diff <= TOL, peft_diff

    state, plain_cfg = merged_state({k: v.double() for k, v in ours.state_dict().items()}, cfg)
    merged = build(plain_cfg).double().eval()
    merged.load_state_dict(state)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "merged", lora="merged")
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        # in float64 merged and unmerged agree to rounding; in fp32 W + s B A rounds the weights once
        assert (merged(TOKENS) - ours.double()(TOKENS)).abs().max().item() <= 1e-10
        assert (exported(TOKENS).logits - logits).abs().max().item() <= MERGED_FP32_TOL


def test_export_needs_a_lora_choice_and_refuses_fused_adapters(tmp_path: Path) -> None:
    _, directory = _hf_dir("phi3", tmp_path)  # Phi-3 stores q/k/v as one qkv_proj
    ours, cfg = _loom_with_adapters(directory, ["q", "down"])
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "ckpt")
    with pytest.raises(HFConversionError, match="--lora merged"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out")
    with pytest.raises(HFConversionError, match="fused or transposed"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "out", lora="adapter")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "merged", lora="merged")  # merging works for any family


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"targets": ["q", "k"]}, "['k']"),  # latent attention
        ({"targets": ["qq"]}, "qq"),
    ],
)
def test_targets_the_family_lacks_are_refused_naming_the_key(overrides: dict, named: str) -> None:
    mla = {"kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16}
    with pytest.raises(ValueError, match="model.lora.targets") as err:
        build({"mla": mla, "lora": {"rank": 4, **overrides}})
    assert named in str(err.value)


def test_gelu_mlp_has_no_gate_and_routed_experts_take_no_adapters() -> None:
    with pytest.raises(ValueError, match=r"model.lora.targets: \['gate'\]"):
        build({"mlp_type": "gelu", "lora": {"rank": 2, "targets": ["gate"]}})
    with pytest.raises(ValueError, match=r"model.lora.targets: \['down'\]"):
        build({"moe": {"num_experts": 4}, "lora": {"rank": 2, "targets": ["down"]}})


def test_only_adapters_train_and_a_fresh_adapter_changes_nothing() -> None:
    torch.manual_seed(0)
    plain = build({})
    torch.manual_seed(0)
    adapted = build({"lora": {"rank": 4, "targets": ["q", "v", "down"]}})
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * 3 * adapted.cfg.n_layers
    count, total = trainable_fraction(adapted)
    assert 0 < count < total / 10
    tokens = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert torch.equal(plain(tokens), adapted(tokens))  # B = 0, and the base drew the seed's weights


MLA = {"kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16, "v_head_dim": 16}


@pytest.mark.parametrize(
    "cfg",
    [
        {"lora": {"rank": 4, "targets": ["q", "k", "v", "o", "gate", "up", "down"]}},
        {"mlp_type": "gelu", "lora": {"rank": 3, "targets": ["q", "up", "down"]}},
        {"mla": {**MLA, "q_lora_rank": 24}, "mtp_depth": 1, "lora": {"rank": 2, "targets": ["q", "o", "down"]}},
        {"moe": {"num_experts": 4, "num_shared_experts": 1, "first_dense": 1}, "lora": {"rank": 2, "targets": ["up"]}},
    ],
    ids=["dense", "gelu", "mla_mtp", "moe_shared"],
)
def test_lora_params_counts_the_built_adapters(cfg: dict) -> None:
    from model.counting import lora_params

    model = build(cfg)
    assert lora_params(model.cfg) == trainable_fraction(model)[0] > 0


def test_bf16_base_holds_the_adapted_weights_narrow_and_merges_into_fp32() -> None:
    from model.counting import lora_layer_params

    cfg = {"lora": {"rank": 4, "targets": ["q", "down"], "base_dtype": "bf16"}}
    torch.manual_seed(0)
    narrow = build(cfg).eval()
    adapted = [m for m in narrow.modules() if isinstance(m, LoRALinear)]
    assert {m.weight.dtype for m in adapted} == {torch.bfloat16}
    assert {m.lora_A.dtype for m in adapted} == {m.lora_B.dtype for m in adapted} == {torch.float32}
    with torch.no_grad():
        for m in adapted:
            m.lora_B.normal_(0, 0.2)
    wide_cfg = dataclasses.replace(narrow.cfg, lora=dataclasses.replace(narrow.cfg.lora, base_dtype="fp32"))
    wide = build(wide_cfg).eval()
    wide.load_state_dict({k: v.float() for k, v in narrow.state_dict().items()})
    tokens = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert torch.equal(narrow(tokens), wide(tokens))  # fp32 compute on the bf16-held weights
    state, _ = merged_state(narrow.state_dict(), narrow.cfg)
    assert state["layers.0.attention.wq.weight"].dtype == torch.float32  # adapters' detail kept
    bases = sum(sum(lora_layer_params(narrow.cfg, i, base=True)) for i in range(narrow.cfg.n_layers))
    assert bases == sum(m.weight.numel() for m in adapted)
