"""RoPE: the relative-position property, every scaling reducing to plain RoPE at factor 1, and Hugging Face's
inverse frequencies for the scalings HF checkpoints use."""

import math

import pytest
import torch

from model.blocks.rope import apply_rope, rope_cos_sin, rope_inv_freq, rotate_half
from model.config import RopeScalingConfig

pytestmark = pytest.mark.usefixtures("single_thread")

HEAD_DIM = 32
SCALINGS = [
    RopeScalingConfig(),
    RopeScalingConfig(type="linear", factor=4.0),
    RopeScalingConfig(type="ntk", factor=4.0),
    RopeScalingConfig(type="yarn", factor=4.0, original_max_seq_len=64),
    RopeScalingConfig(type="llama3", factor=8.0, original_max_seq_len=64),
]


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: s.type)
def test_dot_product_depends_only_on_relative_position(scaling):
    cos, sin = rope_cos_sin(HEAD_DIM, 128, 10000.0, scaling)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, HEAD_DIM, generator=gen, dtype=torch.float64)
    k = torch.randn(1, 1, 1, HEAD_DIM, generator=gen, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k, cos[n : n + 1], sin[n : n + 1])
        return float((qm * kn).sum())

    for offset in (0, 3, 17):
        reference = score(offset, 0)
        for shift in (1, 5, 40, 100):
            assert score(offset + shift, shift) == pytest.approx(reference, rel=1e-5, abs=1e-5)
    assert score(10, 0) != pytest.approx(score(20, 0), abs=1e-3)  # it does depend on the distance


@pytest.mark.parametrize("kind", ["linear", "ntk", "yarn", "llama3"])
def test_every_scaling_is_plain_rope_at_factor_one(kind):
    plain, plain_attn = rope_inv_freq(HEAD_DIM, 10000.0, RopeScalingConfig())
    scaled, attn = rope_inv_freq(HEAD_DIM, 10000.0, RopeScalingConfig(type=kind, factor=1.0, original_max_seq_len=64))
    torch.testing.assert_close(scaled, plain, rtol=1e-6, atol=0)
    assert attn == plain_attn == 1.0


def test_scalings_change_low_frequencies_and_keep_high_ones():
    plain, _ = rope_inv_freq(HEAD_DIM, 10000.0, RopeScalingConfig())
    linear, _ = rope_inv_freq(HEAD_DIM, 10000.0, RopeScalingConfig(type="linear", factor=4.0))
    torch.testing.assert_close(linear, plain / 4)
    ntk, _ = rope_inv_freq(HEAD_DIM, 10000.0, RopeScalingConfig(type="ntk", factor=4.0))
    expected_base = 10000.0 * 4.0 ** (HEAD_DIM / (HEAD_DIM - 2))
    torch.testing.assert_close(ntk, 1.0 / expected_base ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    for kind in ("yarn", "llama3"):
        scaled, _ = rope_inv_freq(HEAD_DIM, 10000.0, RopeScalingConfig(type=kind, factor=4.0, original_max_seq_len=64))
        assert scaled[0] == pytest.approx(plain[0])  # highest frequency untouched
        assert scaled[-1] == pytest.approx(plain[-1] / 4)  # lowest frequency interpolated


def test_yarn_attention_temperature_scales_cos_and_sin():
    scaling = RopeScalingConfig(type="yarn", factor=4.0, original_max_seq_len=64, mscale=1.0)
    cos, sin = rope_cos_sin(HEAD_DIM, 8, 10000.0, scaling)
    assert cos[0, 0] == pytest.approx(0.1 * math.log(4.0) + 1.0)
    torch.testing.assert_close(cos.pow(2) + sin.pow(2), torch.full_like(cos, (0.1 * math.log(4.0) + 1.0) ** 2))


def test_rotate_half_uses_first_and_second_half_not_interleaved_pairs():
    x = torch.arange(8.0)
    assert rotate_half(x).tolist() == [-4.0, -5.0, -6.0, -7.0, 0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "hf_params, ours",
    [
        ({"rope_type": "linear", "factor": 4.0}, RopeScalingConfig(type="linear", factor=4.0)),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            RopeScalingConfig(
                type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64
            ),
        ),
        (
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
            },
            RopeScalingConfig(type="yarn", factor=4.0, original_max_seq_len=64),
        ),
    ],
    ids=["linear", "llama3", "yarn"],
)
def test_inverse_frequencies_match_hugging_face(hf_params, ours):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    theta = 500000.0
    config = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=256,
        rope_parameters={"rope_theta": theta, **hf_params},
    )
    hf_inv_freq, hf_attention_factor = ROPE_INIT_FUNCTIONS[hf_params["rope_type"]](config, "cpu")
    inv_freq, attention_factor = rope_inv_freq(128 // 4, theta, ours)
    torch.testing.assert_close(inv_freq, hf_inv_freq, rtol=0, atol=0)
    assert attention_factor == pytest.approx(hf_attention_factor)


def _hf_cos_sin(rotary_cls, config, length: int):
    """transformers' cos/sin for a forward over positions 0..length-1 (a fresh module: dynamic RoPE is stateful)."""
    rotary = rotary_cls(config)
    x = torch.zeros(1, length, 8)
    cos, sin = rotary(x, torch.arange(length)[None])
    return cos[0], sin[0]


@pytest.mark.parametrize("length", [20, 32, 33, 100])
def test_dynamic_ntk_tables_equal_transformers(length):
    """Plain RoPE up to the original context (32), a base growing with the length beyond it."""
    transformers = pytest.importorskip("transformers")
    from model.blocks.rope import RotaryEmbedding

    config = transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=32,
        rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
    )
    hf_cos, hf_sin = _hf_cos_sin(transformers.models.llama.modeling_llama.LlamaRotaryEmbedding, config, length)
    ours = RotaryEmbedding(32, 128, 10000.0, RopeScalingConfig(type="dynamic", factor=4.0, original_max_seq_len=32))
    cos, sin = ours(torch.arange(length))
    assert (cos - hf_cos).abs().max() <= 1e-6 and (sin - hf_sin).abs().max() <= 1e-6
    if length > 32:  # the scaling really acted
        plain_cos, _ = RotaryEmbedding(32, 128, 10000.0, RopeScalingConfig())(torch.arange(length))
        assert (plain_cos - cos).abs().max() > 1e-2


@pytest.mark.parametrize("length", [10, 16, 17, 60])
def test_longrope_tables_equal_transformers(length):
    """Short factors while the forward stays within the original context (16), long ones for every position of a
    longer forward, cos/sin scaled by sqrt(1 + ln(factor) / ln(original))."""
    transformers = pytest.importorskip("transformers")
    from model.blocks.rope import RotaryEmbedding

    long_factor = [1.0 + 0.37 * i for i in range(8)]
    short_factor = [1.0 + 0.05 * i for i in range(8)]
    config = transformers.Phi3Config(
        hidden_size=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        original_max_position_embeddings=16,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "long_factor": long_factor,
            "short_factor": short_factor,
            "original_max_position_embeddings": 16,
        },
    )
    hf_cos, hf_sin = _hf_cos_sin(transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding, config, length)
    scaling = RopeScalingConfig(
        type="longrope", factor=4.0, original_max_seq_len=16, long_factor=long_factor, short_factor=short_factor
    )
    cos, sin = RotaryEmbedding(16, 64, 10000.0, scaling)(torch.arange(length))
    assert (cos - hf_cos).abs().max() <= 1e-6 and (sin - hf_sin).abs().max() <= 1e-6
    assert cos[0, 0] == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(16)))
