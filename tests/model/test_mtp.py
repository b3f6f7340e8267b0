"""Multi-token prediction (model.mtp_depth) against transformers' own MTP implementation, and as training uses it.

The reference is transformers' `MtpModel` (transformers.modeling_layers), loaded by its own `from_pretrained` from
the directory Loom exports, beside `DeepseekV3ForCausalLM`. transformers finds DeepSeek-V3's MTP weights by the
pattern it ignores on load, which names layer 61 (the published model has 61 layers and one module), so the tiny
model here has 61 layers; for two modules the pattern is widened to layers 61-62 in the test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from family_configs import VOCAB, hf_configs, randomised_loom_model

from model import build
from model.checkpoint_io import save_model_checkpoint
from model.config import ModelConfig
from model.hf import export_checkpoint, model_config_from_hf, read_hf_model

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]
transformers = pytest.importorskip("transformers")

TOKENS = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))


def deepseek_v3_with_mtp(depth: int) -> ModelConfig:
    """The family test's tiny DeepSeek-V3 (MLA, grouped sigmoid routing, shared expert, YaRN), 61 layers deep."""
    cfg = model_config_from_hf(hf_configs()["deepseek_v3"].to_dict(), name="tiny_v3_mtp")
    return dataclasses.replace(cfg, n_layers=61, mtp_depth=depth, hf_model_type=None)


def shifted_labels(tokens: torch.Tensor) -> torch.Tensor:
    return F.pad(tokens[:, 1:], (0, 1), value=-100)


def reference_mtp_loss(main, mtp, tokens: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V3's MTP loss computed by transformers' modules: depth k (1-based) at position i reads the main
    model's final hidden state chain and token i + k, and is scored on token i + k + 1."""
    seq = tokens.shape[1]
    hidden = main(tokens, output_hidden_states=True).hidden_states[-1]
    positions = torch.arange(seq).expand(tokens.shape[0], -1)
    losses = []
    for k in range(1, mtp.num_mtp_layers + 1):
        length = seq - k  # positions with an input token i + k
        hidden = mtp.forward_layer(k - 1, hidden[:, :length], positions[:, k:], None, input_ids=tokens[:, k:])
        logits = mtp._project_to_logits(hidden[:, : seq - k - 1])  # positions with a target i + k + 1
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, k + 1 :].reshape(-1)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("depth", [1, 2])
def test_mtp_exports_to_deepseek_v3_and_equals_transformers_mtp(depth: int, tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, DeepseekV3ForCausalLM
    from transformers.modeling_layers import MtpModel

    if depth > 1:  # transformers names only the published model's single module (layer 61)
        monkeypatch.setattr(
            DeepseekV3ForCausalLM, "_keys_to_ignore_on_load_unexpected", [r"model\.layers\.(?:61|62)\."]
        )
    cfg = deepseek_v3_with_mtp(depth)
    ours = randomised_loom_model(cfg, seed=7)
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "ckpt")
    export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "deepseek_v3" and config["num_nextn_predict_layers"] == depth

    main, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    mtp = MtpModel.from_pretrained(main.eval())
    assert mtp.num_mtp_layers == depth
    own = [p for n, p in mtp.named_parameters() if not n.startswith(("embed_tokens", "shared_head"))]
    assert sum(p.numel() for p in own) == sum(p.numel() for p in ours.mtp.parameters())

    ours.train()  # the MTP loss is a training term (eval measures the next-token loss alone)
    with torch.no_grad():
        total = ours(TOKENS, shifted_labels(TOKENS))
        terms = ours.last_loss_terms
        reference_ce = main(TOKENS, labels=TOKENS).loss
        reference = reference_mtp_loss(main, mtp.eval(), TOKENS)
    assert abs(terms["ce_loss"] - reference_ce) <= 1e-5
    assert abs(terms["mtp_loss"] - reference) <= 1e-5, (terms["mtp_loss"].item(), reference.item())
    expected = terms["ce_loss"] + cfg.mtp_loss_weight * terms["mtp_loss"]
    expected += (
        cfg.moe.aux_loss_weight * terms["moe_aux_loss"] + cfg.moe.router_z_loss_weight * terms["moe_router_z_loss"]
    )
    assert torch.allclose(total, expected)

    # ... and back: the import finds the modules in the files and restores every tensor
    state, imported = read_hf_model(tmp_path / "hf")
    assert imported.mtp_depth == depth
    for key, value in ours.state_dict().items():
        assert torch.equal(state[key], value), key


def test_import_without_mtp_weights_builds_no_modules(tmp_path: Path) -> None:
    """transformers' DeepSeek-V3 config names one MTP module, but its save_pretrained writes none: none is built."""
    from transformers import AutoModelForCausalLM

    config = hf_configs()["deepseek_v3"]
    assert config.num_nextn_predict_layers == 1
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    state, cfg = read_hf_model(tmp_path)
    assert cfg.mtp_depth == 0 and not any(k.startswith("mtp.") for k in state)


def test_mtp_loss_sees_no_token_beyond_its_input() -> None:
    """Depth k at position i reads tokens up to i + k only: changing token j leaves every depth-k prediction at
    positions i < j - k unchanged (checked through the loss of a single sequence with one target kept)."""
    cfg = ModelConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, max_seq_len=16, mtp_depth=2, multiple_of=32)
    model = randomised_loom_model(cfg, seed=7).train()
    tokens = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(0))
    changed = tokens.clone()
    j = 8
    changed[0, j] = (tokens[0, j] + 1) % 40

    def depth_loss_at(seq: torch.Tensor, depth: int, position: int) -> float:
        """The loss of depth `depth`'s prediction at `position` alone: the only label that module scores."""
        labels = torch.full_like(seq, -100)
        labels[0, : position + depth] = seq[0, 1 : position + depth + 1]  # its inputs, as the data gives them
        labels[0, position + depth] = 7  # its target (token position + depth + 1), the same in both runs
        with torch.no_grad():
            model(seq, labels)
        return model.last_aux_losses["mtp_loss"].item()

    for depth in (1, 2):
        for i in range(j - depth):
            assert depth_loss_at(tokens, depth, i) == depth_loss_at(changed, depth, i), (depth, i)
        assert depth_loss_at(tokens, depth, j - depth) != depth_loss_at(changed, depth, j - depth)


def test_mtp_trains_only_in_train_mode_and_reaches_every_parameter() -> None:
    cfg = ModelConfig(
        vocab_size=40,
        dim=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=16,
        mtp_depth=1,
        multiple_of=32,
        moe=dict(num_experts=4, top_k=2, first_dense=1),
    )
    model = randomised_loom_model(cfg, seed=7).train()
    labels = shifted_labels(TOKENS[:, :16] % 40)
    loss = model(TOKENS[:, :16] % 40, labels)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mtp.parameters())
    assert set(model.last_loss_terms) == {"ce_loss", "mtp_loss", "moe_aux_loss", "moe_router_z_loss"}
    assert list(model.last_aux_losses) == ["mtp_loss", "moe_aux_loss", "moe_router_z_loss"]
    model.eval()
    with torch.no_grad():
        held_out = model(TOKENS[:, :16] % 40, labels)
    assert "mtp_loss" not in model.last_aux_losses and "mtp_loss" not in model.last_loss_terms
    without = dataclasses.replace(cfg, mtp_depth=0)
    plain = build(without).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")})
    with torch.no_grad():
        assert torch.equal(held_out, plain(TOKENS[:, :16] % 40, labels))


def test_family_without_mtp_exports_the_main_model_and_says_so(tmp_path: Path, caplog) -> None:
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(
        name="llama_mtp", vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq_len=32, multiple_of=32, mtp_depth=1
    )
    ours = randomised_loom_model(cfg, seed=7).eval()
    save_model_checkpoint(ours.state_dict(), cfg, tmp_path / "ckpt")
    with caplog.at_level("WARNING"):
        export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")
    assert "llama has no place for multi-token-prediction modules" in caplog.text
    reference, info = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        assert (ours(TOKENS) - reference.eval()(TOKENS).logits).abs().max() <= 1e-4
