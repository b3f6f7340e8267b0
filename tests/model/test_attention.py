"""Attention: every variant against an explicit per-head reference, dtype preservation, causality, the sliding
window rule, padding, and cached decoding equal to a full forward."""

import math

import pytest
import torch

from model.blocks.alibi import alibi_slopes
from model.blocks.attention import Attention, build_attention_mask
from model.blocks.kv_cache import KVCache
from model.blocks.rope import rope_cos_sin
from model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("single_thread")

VARIANTS = {
    "mha": dict(),
    "gqa": dict(n_kv_heads=2),
    "mqa": dict(n_kv_heads=1),
    "sliding_window": dict(n_kv_heads=2, sliding_window=3),
    "softcap": dict(attn_logit_softcap=0.5),
    "alibi": dict(pos_embedding="alibi"),
    "qk_norm": dict(qk_norm=True, n_kv_heads=2),
    "biases": dict(qkv_bias=True, attn_out_bias=True),
    "alibi_window_softcap": dict(pos_embedding="alibi", sliding_window=4, attn_logit_softcap=1.0),
}


def make(variant: str, seed: int = 0) -> tuple[Attention, ModelConfig]:
    cfg = ModelConfig(dim=32, n_heads=4, max_seq_len=64, **VARIANTS[variant])
    torch.manual_seed(seed)
    attn = Attention(cfg)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)  # large enough that softcap and masks visibly matter
    return attn, cfg


def rope_for(cfg: ModelConfig, positions: torch.Tensor):
    if cfg.pos_embedding != "rope":
        return None
    cos, sin = rope_cos_sin(cfg.attn_head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
    return cos[positions], sin[positions]


@torch.no_grad()
def reference_attention(attn: Attention, cfg: ModelConfig, x: torch.Tensor) -> torch.Tensor:
    """Naive fp64 attention, one head and one query at a time, written from the definitions."""
    attn = attn.double()
    x = x.double()
    bsz, seqlen, _ = x.shape
    hd, n_heads, n_kv = cfg.attn_head_dim, cfg.n_heads, cfg.kv_heads
    q = attn.wq(x).view(bsz, seqlen, n_heads, hd)
    k = attn.wk(x).view(bsz, seqlen, n_kv, hd)
    v = attn.wv(x).view(bsz, seqlen, n_kv, hd)
    if cfg.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if cfg.pos_embedding == "rope":
        cos, sin = rope_for(cfg, torch.arange(seqlen))
        cos, sin = cos.double()[:, None], sin.double()[:, None]
        half = hd // 2
        rot = lambda t: torch.cat((-t[..., half:], t[..., :half]), -1)  # noqa: E731
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    slopes = alibi_slopes(n_heads).double()
    out = torch.zeros(bsz, seqlen, n_heads, hd, dtype=torch.float64)
    for b in range(bsz):
        for h in range(n_heads):
            kv_head = h // (n_heads // n_kv)
            for i in range(seqlen):
                scores = []
                for j in range(seqlen):
                    visible = j <= i and (cfg.sliding_window is None or i - cfg.sliding_window < j)
                    s = float(q[b, i, h] @ k[b, j, kv_head]) / math.sqrt(hd)
                    if cfg.attn_logit_softcap is not None:
                        s = cfg.attn_logit_softcap * math.tanh(s / cfg.attn_logit_softcap)
                    if cfg.pos_embedding == "alibi":
                        s -= float(slopes[h]) * (i - j)
                    scores.append(s if visible else float("-inf"))
                probs = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
                out[b, i, h] = probs @ v[b, :, kv_head]
    return attn.wo(out.reshape(bsz, seqlen, -1))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_naive_reference(variant):
    attn, cfg = make(variant)
    x = torch.randn(2, 9, cfg.dim)
    out = attn(x, rope_for(cfg, torch.arange(9)))
    expected = reference_attention(attn, cfg, x)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_dtype_and_causality(variant, dtype):
    attn, cfg = make(variant)
    attn = attn.to(dtype)
    seqlen, t = 10, 6
    x = torch.randn(2, seqlen, cfg.dim, dtype=dtype)
    rope = rope_for(cfg, torch.arange(seqlen))
    out = attn(x, rope)
    assert out.shape == x.shape and out.dtype == dtype
    x2 = x.clone()
    x2[:, t] += 1.0
    out2 = attn(x2, rope)
    assert torch.equal(out[:, :t], out2[:, :t]), "a future token changed an earlier output"
    assert not torch.equal(out[:, t:], out2[:, t:])


def test_sliding_window_follows_mistral_rule():
    window = 3
    mask = build_attention_mask(6, 6, sliding_window=window)[0, 0]
    for i in range(6):
        for j in range(6):
            assert bool(mask[i, j]) == (i - window < j <= i), (i, j)
    attn, cfg = make("sliding_window")
    x = torch.randn(1, 8, cfg.dim)
    rope = rope_for(cfg, torch.arange(8))
    x2 = x.clone()
    x2[:, 2] += 1.0  # position 2 is out of the window of queries >= 5
    out, out2 = attn(x, rope), attn(x2, rope)
    assert torch.equal(out[:, 5:], out2[:, 5:])
    assert not torch.equal(out[:, 2:5], out2[:, 2:5])


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8).tolist() == [2.0 ** -(i + 1) for i in range(8)]
    assert alibi_slopes(6).tolist() == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_left_padding_gives_the_same_outputs_as_no_padding():
    attn, cfg = make("gqa")
    x = torch.randn(1, 5, cfg.dim)
    pad = 3
    x_padded = torch.cat([torch.randn(1, pad, cfg.dim), x], dim=1)
    mask = torch.tensor([[0] * pad + [1] * 5])
    positions = torch.clamp(mask.cumsum(-1) - 1, min=0)
    out_padded = attn(x_padded, rope_for(cfg, positions[0]), attention_mask=mask)
    expected = attn(x, rope_for(cfg, torch.arange(5)))
    torch.testing.assert_close(out_padded[:, pad:], expected, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(out_padded).all()


@pytest.mark.parametrize("variant", ["gqa", "sliding_window", "alibi_window_softcap"])
def test_cached_decoding_equals_full_forward(variant):
    attn, cfg = make(variant)
    x = torch.randn(2, 9, cfg.dim)
    full = attn(x, rope_for(cfg, torch.arange(9)))
    cache = KVCache(2, cfg.kv_heads, 16, cfg.attn_head_dim, dtype=torch.float32, device="cpu")
    pieces = [attn(x[:, :4], rope_for(cfg, torch.arange(4)), cache=cache)]
    for t in range(4, 9):
        pieces.append(attn(x[:, t : t + 1], rope_for(cfg, torch.arange(t, t + 1)), cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)
    assert cache.length == 9


def test_cache_overflow_is_a_clear_error():
    cache = KVCache(1, 1, 4, 8, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 5, 8))
