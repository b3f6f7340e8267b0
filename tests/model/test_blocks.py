"""Norms, MLPs and the decoder block: definitions, sizing rules, dtype preservation, norm placements, causality."""

import pytest
import torch
import torch.nn.functional as F

from model.blocks.block import TransformerBlock
from model.blocks.mlp import FeedForward
from model.blocks.norm import LayerNorm, RMSNorm, build_norm
from model.blocks.rope import rope_cos_sin
from model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def test_rmsnorm_definition_and_hf_order_of_operations():
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 16)
    expected = norm.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), expected)
    # bf16: statistics in fp32, cast back to bf16, then times the weight (HF Llama's LlamaRMSNorm)
    norm_bf16 = norm.to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    x32 = xb.float()
    hf = norm_bf16.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16)
    out = norm_bf16(xb)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, hf)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_bias_is_optional(bias):
    cfg = ModelConfig(norm_type="layernorm", norm_bias=bias)
    norm = build_norm(cfg)
    assert isinstance(norm, LayerNorm)
    assert (norm.bias is not None) == bias
    x = torch.randn(2, 5, cfg.dim)
    torch.testing.assert_close(norm(x), F.layer_norm(x, (cfg.dim,), norm.weight, norm.bias, cfg.norm_eps))


def test_swiglu_and_gelu_definitions():
    x = torch.randn(4, 8)
    swiglu = FeedForward(8, 24)
    expected = swiglu.w2(F.silu(swiglu.w1(x)) * swiglu.w3(x))
    torch.testing.assert_close(swiglu(x), expected)
    gelu = FeedForward(8, 32, mlp_type="gelu", bias=True)
    assert gelu.w3 is None and gelu.w1.bias is not None
    h = gelu.w1(x)
    gelu_new = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h.pow(3))))  # GPT-2's gelu_new
    torch.testing.assert_close(gelu(x), gelu.w2(gelu_new))


def test_ffn_sizing_rules():
    assert ModelConfig(dim=4096, multiple_of=256, ffn_dim_multiplier=1.3).ffn_hidden_dim == 14336  # Llama-3 8B
    assert ModelConfig(dim=128, multiple_of=64).ffn_hidden_dim == 384
    assert ModelConfig(dim=128, mlp_type="gelu").ffn_hidden_dim == 512
    block = TransformerBlock(ModelConfig(dim=128, multiple_of=64), 0)
    assert block.feed_forward.w1.weight.shape == (384, 128)


def _block(position: str, **overrides) -> tuple[TransformerBlock, ModelConfig]:
    cfg = ModelConfig(dim=32, n_heads=4, n_kv_heads=2, norm_position=position, multiple_of=16, **overrides)
    torch.manual_seed(0)
    return TransformerBlock(cfg, 0), cfg


def test_norm_placements_compute_the_documented_formulas():
    x = torch.randn(2, 6, 32)
    cos, sin = rope_cos_sin(8, 6, 10000.0, ModelConfig().rope_scaling)
    rope = (cos, sin)
    block, _ = _block("pre")
    h = x + block.attention(block.attention_norm(x), rope)
    torch.testing.assert_close(block(x, rope), h + block.feed_forward(block.ffn_norm(h)))
    block, _ = _block("post")
    h = block.attention_norm(x + block.attention(x, rope))
    torch.testing.assert_close(block(x, rope), block.ffn_norm(h + block.feed_forward(h)))
    block, _ = _block("sandwich")
    with torch.no_grad():
        block.post_attention_norm.weight.fill_(0.5)
        block.post_ffn_norm.weight.fill_(2.0)
    h = x + block.post_attention_norm(block.attention(block.attention_norm(x), rope))
    torch.testing.assert_close(block(x, rope), h + block.post_ffn_norm(block.feed_forward(block.ffn_norm(h))))


@pytest.mark.parametrize("position", ["pre", "post", "sandwich"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_shape_dtype_causality(position, dtype):
    block, cfg = _block(position, norm_type="layernorm" if position == "post" else "rmsnorm")
    block = block.to(dtype)
    x = torch.randn(2, 8, 32, dtype=dtype)
    cos, sin = rope_cos_sin(8, 8, 10000.0, cfg.rope_scaling)
    out = block(x, (cos, sin))
    assert out.shape == x.shape and out.dtype == dtype
    x2 = x.clone()
    x2[:, 5] += 1
    assert torch.equal(block(x2, (cos, sin))[:, :5], out[:, :5])


def test_moe_block_has_moe_not_feed_forward():
    cfg = ModelConfig(dim=32, n_heads=4, moe=dict(num_experts=4, top_k=2, first_dense=1))
    from model import build

    model = build(cfg)
    assert model.layers["0"].moe is None and model.layers["0"].feed_forward is not None
    assert model.layers["1"].moe is not None and model.layers["1"].feed_forward is None
