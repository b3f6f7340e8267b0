"""QK-clip: the attention records each head's largest causal logit, and the clip brings exactly the heads above
tau down to tau (grouped KV heads included) while leaving the others' logits as they were (launcher/qk_clip.py)."""

from __future__ import annotations

import pytest
import torch

from launcher.config import MuonConfig, OptimConfig, TrainConfig
from launcher.qk_clip import QKClip
from launcher.validation import ConfigError, validate
from model.blocks.attention import Attention
from model.config import ModelConfig

HEADS, KV_HEADS, DIM = 4, 2, 32


def attention() -> Attention:
    torch.manual_seed(0)
    cfg = ModelConfig(name="t", vocab_size=16, dim=DIM, n_layers=1, n_heads=HEADS, n_kv_heads=KV_HEADS, qkv_bias=True)
    layer = Attention(cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


@torch.no_grad()
def reference_max_logits(layer: Attention, x: torch.Tensor) -> torch.Tensor:
    """max over batch and causal (query, key) pairs of q_h . k_{h // group} / sqrt(head_dim), per query head."""
    b, t, _ = x.shape
    d, group = layer.head_dim, HEADS // KV_HEADS
    q = layer.wq(x).view(b, t, HEADS, d)
    k = layer.wk(x).view(b, t, KV_HEADS, d)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    out = []
    for h in range(HEADS):
        logits = torch.einsum("bid,bjd->bij", q[:, :, h], k[:, :, h // group]) / d**0.5
        out.append(logits.masked_fill(~causal, float("-inf")).amax())
    return torch.stack(out)


def test_recorded_maxima_equal_the_explicit_logits_and_the_clip_brings_them_to_tau():
    layer, x = attention(), torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(1))
    clip = QKClip([layer], tau=1.0)
    before = reference_max_logits(layer, x)
    layer(x)
    torch.testing.assert_close(layer.max_logit, before, rtol=1e-5, atol=1e-5)
    tau = float(before.median())  # some heads above, some below
    clip.tau = tau
    assert (before > tau).any() and (before < tau).any(), before
    clip.apply()
    assert layer.max_logit is None  # cleared for the next step
    after = reference_max_logits(layer, x)
    torch.testing.assert_close(after, before.clamp(max=tau), rtol=1e-5, atol=1e-6)


def test_the_max_logit_pass_in_query_chunks_gives_the_same_maxima(monkeypatch):
    import model.blocks.attention as attention_module

    layer, x = attention(), torch.randn(2, 8, DIM, generator=torch.Generator().manual_seed(1))
    QKClip([layer], tau=1.0)
    monkeypatch.setattr(attention_module, "MAX_LOGIT_CHUNK_ELEMENTS", 2 * HEADS * 8 * 3)  # 3 query rows a chunk
    layer(x)
    torch.testing.assert_close(layer.max_logit, reference_max_logits(layer, x), rtol=1e-5, atol=1e-5)


def test_nothing_is_recorded_in_eval_mode_and_no_clip_without_maxima():
    layer = attention()
    QKClip([layer], tau=1.0)
    layer.eval()
    layer(torch.randn(1, 4, DIM))
    assert layer.max_logit is None


def config(**parallel) -> TrainConfig:
    cfg = TrainConfig(optim=OptimConfig(name="muon", muon=MuonConfig(qk_clip_tau=50.0)))
    for key, value in parallel.items():
        setattr(cfg.parallel, key, value)
    return cfg


@pytest.mark.parametrize("key", ["tp", "cp", "pp"])
def test_qk_clip_refuses_layouts_that_split_heads_sequences_or_layers(key):
    with pytest.raises(ConfigError, match=f"qk_clip_tau>0 runs on one process.*{key}=2"):
        validate(config(**{key: 2}), world_size=2)


def test_qk_clip_without_muon_is_refused():
    cfg = TrainConfig(optim=OptimConfig(muon=MuonConfig(qk_clip_tau=50.0)))
    with pytest.raises(ConfigError, match="read with optim=muon only"):
        validate(cfg, world_size=1)


@pytest.mark.parametrize(
    "muon,match",
    [({"ns_steps": 0}, "ns_steps=0 must be >= 1"), ({"momentum": 1.0}, "momentum=1.0"), ({"lr": -1.0}, "muon.lr")],
)
def test_bad_muon_keys_are_refused_naming_them(muon, match):
    with pytest.raises(ConfigError, match=match):
        validate(TrainConfig(optim=OptimConfig(name="muon", muon=MuonConfig(**muon))), world_size=1)


def test_muon_refuses_deepspeed():
    cfg = TrainConfig(optim=OptimConfig(name="muon"))
    cfg.parallel.engine = "deepspeed"
    with pytest.raises(ConfigError, match="optim.name=muon runs on the torch layouts only"):
        validate(cfg, world_size=1)
