"""The model's own probes for trainer.layer_health: the attention's max logit (model/blocks/attention.py) and the
MoE router's entropy (model/blocks/moe.py), checked against explicit computations; both idle unless turned on."""

from __future__ import annotations

import math

import pytest
import torch

from model.blocks.attention import ScaledDotProductAttention, repeat_kv
from model.blocks.moe import MoE
from model.config import MoEConfig


def explicit_max_logit(q, k, q_start, scale):
    scores = q @ repeat_kv(k, q.shape[1] // k.shape[1]).transpose(-2, -1) * scale
    causal = torch.arange(k.shape[2])[None, :] <= (torch.arange(q.shape[2]) + q_start)[:, None]
    return scores.masked_fill(~causal, float("-inf")).max()


def test_max_logit_is_the_largest_causal_gqa_logit_over_the_forwards():
    torch.manual_seed(0)
    attention = ScaledDotProductAttention()
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    attention(q, k, v)
    assert attention.max_logit is None  # off unless the launcher turns it on
    attention.measure_max_logit = True
    out = attention(q, k, v)
    torch.testing.assert_close(out, ScaledDotProductAttention()(q, k, v))  # the attention itself is unchanged
    torch.testing.assert_close(attention.max_logit, explicit_max_logit(q, k, 0, 8**-0.5))
    # A future key (query 0 against key 5) with a huge logit does not count; a later forward's larger one does.
    k2 = k.clone()
    k2[:, :, 5] = 100 * q[:, ::2, 0]
    attention(q, k2, v, scale=0.5)
    torch.testing.assert_close(attention.max_logit, explicit_max_logit(q, k2, 0, 0.5))
    # Decoding: 2 new queries after 4 cached keys see keys 0..4 and 0..5.
    attention.max_logit = None
    attention(q[:, :, :2], k, v[:, :, :6], q_start=4)
    torch.testing.assert_close(attention.max_logit, explicit_max_logit(q[:, :, :2], k, 4, 8**-0.5))


def test_router_entropy_is_the_mean_entropy_of_the_routing_distributions():
    torch.manual_seed(0)
    moe = MoE(8, MoEConfig(num_experts=4, top_k=2), hidden_dim=16)
    moe.train()
    moe(torch.randn(3, 5, 8))
    assert moe.router_entropy is None
    moe.measure_router_entropy = True
    x = torch.randn(3, 5, 8)
    moe(x)
    moe(x)
    total, count = moe.router_entropy
    probs = torch.softmax(x.reshape(-1, 8) @ moe.router.weight.t(), dim=-1)
    want = -(probs * probs.log()).sum(-1).mean()
    assert count == 2
    torch.testing.assert_close(total / count, want)
    with torch.no_grad():
        moe.router.weight.zero_()  # a uniform router: ln(E)
    moe.router_entropy = None
    moe(x)
    assert moe.router_entropy[0].item() == pytest.approx(math.log(4), rel=1e-6)
