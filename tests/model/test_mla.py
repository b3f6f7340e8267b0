"""Multi-head latent attention: the decoding cache holds the compressed latent (kv_lora_rank + rope dims per token
and layer, not 2 x heads x head_dim), and decoding through it gives what recomputing the whole sequence gives."""

import pytest
import torch

from model import build
from model.blocks.kv_cache import KVCache, LatentKVCache
from model.config import MLAConfig, ModelConfig
from model.generation import generate

pytestmark = pytest.mark.usefixtures("single_thread")

MLA = MLAConfig(kv_lora_rank=12, q_lora_rank=20, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=10)
BASE = dict(vocab_size=61, dim=48, n_layers=2, n_heads=4, max_seq_len=64, hidden_dim=64, mla=MLA)


def make(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(ModelConfig(**{**BASE, **overrides}))
    with torch.no_grad():
        model.output.weight.mul_(20)  # peaky: greedy choices far from ties
    return model.eval()


@pytest.mark.parametrize("q_lora_rank", [20, None], ids=["low_rank_q", "full_rank_q"])
def test_cache_holds_the_latent_per_token_and_layer(q_lora_rank):
    model = make(mla=MLAConfig(**{**MLA.__dict__, "q_lora_rank": q_lora_rank}))
    caches = model.new_caches(batch_size=3, max_len=30)
    assert len(caches) == 2 and all(isinstance(c, LatentKVCache) for c in caches.values())
    for cache in caches.values():
        assert cache.latent.shape == (3, 30, 12) and cache.k_rope.shape == (3, 30, 8)
        assert cache.elements_per_token == 12 + 8  # vs 2 * 4 heads * (16 + 8) = 192 for the expanded keys/values
    plain = build(ModelConfig(vocab_size=61, dim=48, n_layers=2, n_heads=4, max_seq_len=64))
    standard = next(iter(plain.new_caches(3, 30).values()))
    assert isinstance(standard, KVCache) and standard.elements_per_token == 2 * 4 * 12
    # decoding writes exactly one latent per token into the cache
    tokens = torch.randint(0, 61, (3, 7))
    with torch.no_grad():
        model(tokens, cache=caches)
    assert all(c.length == 7 for c in caches.values())
    layer = model.layers["0"].attention
    with torch.no_grad():
        x = model.tok_embeddings(tokens)
        latent = layer.kv_a_norm(layer.wkv_a(model.layers["0"].attention_norm(x))[..., :12])
    torch.testing.assert_close(caches["0"].latent[:, :7], latent)


def uncached_greedy(model, prompt, n):
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    return sequence[len(prompt) :]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(sliding_window=4, attn_logit_softcap=5.0),
        dict(
            moe=dict(
                num_experts=4,
                top_k=2,
                score_func="sigmoid",
                n_groups=2,
                topk_groups=1,
                group_score="top2_sum",
                expert_bias=True,
                num_shared_experts=1,
                first_dense=1,
            )
        ),
    ],
    ids=["mla", "mla_window_softcap", "deepseek_v3_like"],
)
def test_cached_decoding_equals_uncached(overrides):
    model = make(**overrides)
    prompts = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9]]
    out = generate(model, prompts, 10, greedy=True)
    for prompt, new_tokens in zip(prompts, out):
        assert new_tokens == uncached_greedy(model, prompt, 10)
    # and the logits themselves: one token at a time through the cache vs one full forward
    tokens = torch.randint(0, 61, (2, 12))
    cache = model.new_caches(2, 12)
    with torch.no_grad():
        stepwise = torch.cat([model(tokens[:, i : i + 1], cache=cache) for i in range(12)], dim=1)
        torch.testing.assert_close(stepwise, model(tokens), rtol=1e-5, atol=1e-5)
