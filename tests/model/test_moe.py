"""MoE: dropless sorted dispatch equals a naive per-token reference for every routing option (softmax/sigmoid
scores, grouped top-k, routed scaling, selection bias, gated shared experts); router losses have their defined
values; auxiliary-loss-free balancing evens out a skewed router."""

import pytest
import torch
import torch.nn.functional as F

from model.blocks.moe import MoE
from model.config import MoEConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def make_moe(top_k: int, *, shared: int = 0, norm_topk_prob: bool = True, num_experts: int = 4, **options) -> MoE:
    torch.manual_seed(0)
    cfg = MoEConfig(
        num_experts=num_experts, top_k=top_k, num_shared_experts=shared, norm_topk_prob=norm_topk_prob, **options
    )
    moe = MoE(16, cfg, 24, 24 * shared)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
        if moe.expert_bias is not None:
            moe.expert_bias.normal_(0, 0.1)
    return moe


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert, straight from the definition (DeepSeek-V2/V3 papers for the options)."""
    cfg = moe.cfg
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    per_group = cfg.num_experts // cfg.n_groups
    for t in range(flat.shape[0]):
        logits = moe.router(flat[t])
        scores = torch.sigmoid(logits) if cfg.score_func == "sigmoid" else torch.softmax(logits, dim=-1)
        biased = scores + moe.expert_bias if moe.expert_bias is not None else scores
        allowed = list(range(cfg.num_experts))
        if cfg.n_groups > 1:
            groups = [biased[g * per_group : (g + 1) * per_group] for g in range(cfg.n_groups)]
            group_score = [g.max() if cfg.group_score == "max" else g.topk(2).values.sum() for g in groups]
            best = torch.topk(torch.stack(group_score), cfg.topk_groups).indices.tolist()
            allowed = [e for e in allowed if e // per_group in best]
        chosen = sorted(allowed, key=lambda e: -float(biased[e].detach()))[: moe.top_k]
        weights = scores[chosen]
        if moe.norm_topk_prob:
            weights = weights / weights.sum()
        weights = weights * cfg.routed_scaling_factor
        for w, e in zip(weights, chosen):
            ex = moe.experts
            hidden = F.silu(ex.w1[e] @ flat[t]) * (ex.w3[e] @ flat[t])
            out[t] += w * (ex.w2[e] @ hidden)
        if moe.shared_experts is not None:
            gate = torch.sigmoid(moe.shared_expert_gate(flat[t])) if moe.shared_expert_gate is not None else 1.0
            out[t] += gate * moe.shared_experts(flat[t])
    return out.reshape(x.shape)


ROUTING = {
    "top1": dict(top_k=1),
    "top2": dict(top_k=2),
    "top2_shared": dict(top_k=2, shared=1),
    "top3_two_shared_unnormalised": dict(top_k=3, shared=2, norm_topk_prob=False),
    "qwen2_moe_gated_shared": dict(top_k=2, shared=1, shared_expert_gate=True, norm_topk_prob=False),
    "deepseek_v2_groups_max": dict(
        top_k=2,
        num_experts=8,
        n_groups=4,
        topk_groups=2,
        group_score="max",
        norm_topk_prob=False,
        routed_scaling_factor=1.5,
        shared=2,
    ),
    "deepseek_v3_sigmoid_bias": dict(
        top_k=3,
        num_experts=8,
        n_groups=4,
        topk_groups=2,
        group_score="top2_sum",
        score_func="sigmoid",
        expert_bias=True,
        routed_scaling_factor=2.5,
        shared=1,
    ),
}


@pytest.mark.parametrize("routing", list(ROUTING))
def test_dropless_dispatch_equals_naive_reference(routing):
    moe = make_moe(**ROUTING[routing])
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), naive_moe(moe, x), rtol=1e-5, atol=1e-5)


def test_selection_bias_changes_the_choice_not_the_weights():
    moe = make_moe(top_k=1, num_experts=4, score_func="sigmoid", expert_bias=True, norm_topk_prob=False)
    x = torch.randn(50, 16)
    with torch.no_grad():
        moe.expert_bias.zero_()
        moe.expert_bias[3] = 10.0  # expert 3 always chosen, but weighted by its unbiased score
    _, weights, experts = moe.route(x)
    assert experts.flatten().tolist() == [3] * 50
    torch.testing.assert_close(weights.flatten(), torch.sigmoid(moe.router(x)[:, 3]))


def test_bias_update_moves_against_the_load_and_stays_zero_mean():
    moe = make_moe(top_k=1, num_experts=4, score_func="sigmoid", expert_bias=True, bias_update_rate=0.01)
    with torch.no_grad():
        moe.expert_bias.zero_()
    moe.update_expert_bias(torch.tensor([10.0, 0.0, 3.0, 3.0]))  # mean 4: expert 0 over, 1 under, 2 and 3 under
    torch.testing.assert_close(moe.expert_bias, torch.tensor([-0.015, 0.005, 0.005, 0.005]))
    assert abs(float(moe.expert_bias.sum())) < 1e-7


def test_gradients_match_naive_reference():
    moe = make_moe(2, shared=1, shared_expert_gate=True)
    x = torch.randn(2, 5, 16)
    moe(x).square().sum().backward()
    fast = {n: p.grad.clone() for n, p in moe.named_parameters()}
    moe.zero_grad()
    naive_moe(moe, x).square().sum().backward()
    for n, p in moe.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_preserved(dtype):
    moe = make_moe(2, shared=1).to(dtype)
    out = moe(torch.randn(2, 4, 16, dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, 4, 16)


@pytest.mark.parametrize("top_k", [1, 2])
def test_aux_loss_is_one_for_uniform_router_and_larger_when_collapsed(top_k):
    num_experts = 4
    moe = make_moe(top_k, num_experts=num_experts)
    x = torch.rand(64, 16) + 0.1  # positive inputs
    with torch.no_grad():
        moe.router.weight.zero_()  # every logit 0: P_i = 1/E, and the f_i sum to 1 -> E * (1/E) * 1 = 1
    moe(x)
    assert moe.aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    assert moe.router_z_loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item() ** 2, rel=1e-6)

    with torch.no_grad():
        moe.router.weight[0].fill_(5.0)  # expert 0 takes (almost) all probability mass
    moe(x)
    logits = moe.router(x)
    probs = torch.softmax(logits, -1)
    chosen = torch.topk(probs, top_k, -1).indices
    fraction = torch.bincount(chosen.flatten(), minlength=num_experts).float() / chosen.numel()
    exact = num_experts * (fraction * probs.mean(0)).sum()
    assert moe.aux_loss.item() == pytest.approx(exact.item(), rel=1e-5)
    # top-1: f_0 = 1 and P_0 ~ 1 -> ~E; top-2: f_0 = 1/2 -> ~E/2. Both well above the balanced minimum of 1.
    assert moe.aux_loss.item() == pytest.approx(num_experts / top_k, rel=1e-3)


def test_aux_losses_carry_gradient_to_the_router():
    moe = make_moe(2)
    moe(torch.randn(10, 16))
    (moe.aux_loss + moe.router_z_loss).backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_experts_with_no_tokens_are_fine():
    moe = make_moe(1)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2].fill_(1.0)
    x = torch.rand(5, 16) + 0.1
    torch.testing.assert_close(moe(x), naive_moe(moe, x), rtol=1e-5, atol=1e-5)


def _skewed_run(bias_update_rate: float, steps: int = 20) -> tuple[list[float], torch.nn.Module]:
    """Train a tiny DeepSeek-V3-style MoE LM whose routers all favour experts 0 and 1 (a direction every token
    embedding shares, which those two router rows point along), calling the model's balancing hook after each
    optimizer step as the trainer does; returns the per-step load imbalance (max / mean load, 4 = all tokens on
    2 of 8 experts, 1 = even)."""
    from model import build
    from model.config import ModelConfig

    torch.manual_seed(0)
    moe = dict(
        num_experts=8,
        top_k=2,
        score_func="sigmoid",
        expert_bias=True,
        bias_update_rate=bias_update_rate,
        aux_loss_weight=0.0,
        router_z_loss_weight=0.0,
        expert_hidden_dim=16,
    )
    model = build(ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=32, hidden_dim=64, moe=moe))
    with torch.no_grad():
        shared = torch.randn(32)
        shared /= shared.norm()
        model.tok_embeddings.weight.add_(0.1 * shared)
        for layer in model.layers.values():
            layer.moe.router.weight[:2].add_(shared)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    imbalance = []
    for _ in range(steps):
        tokens = torch.randint(0, 64, (8, 17), generator=generator)
        model(tokens[:, :-1], tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
        imbalance.append(float(model.update_expert_biases()))
    return imbalance, model


def test_aux_loss_free_balancing_lowers_load_imbalance_on_a_skewed_router():
    balanced, model = _skewed_run(0.02)
    control, _ = _skewed_run(0.0)
    assert balanced[0] == control[0] == pytest.approx(4.0, abs=0.05)  # both start fully collapsed
    assert min(control[-5:]) > 3.9  # without the bias update nothing changes
    assert sum(balanced[-5:]) / 5 < 0.75 * sum(control[-5:]) / 5, (balanced, control)
    for layer in model.layers.values():
        bias = layer.moe.expert_bias
        assert abs(float(bias.sum())) < 1e-5 and bias[:2].max() < bias[2:].min()  # the favoured two pushed down


def test_balancing_hook_reduces_loads_once_and_restarts_the_counts():
    from model import build
    from model.config import ModelConfig

    model = build(
        ModelConfig(
            vocab_size=64,
            dim=32,
            n_layers=3,
            n_heads=4,
            max_seq_len=32,
            hidden_dim=64,
            moe=dict(num_experts=4, top_k=1, expert_bias=True, first_dense=1),
        )
    )
    tokens = torch.randint(0, 64, (2, 9))
    model(tokens, tokens)  # training mode: counted
    model.eval()
    model(tokens)  # evaluation: not counted
    seen = []

    def reduce_load(loads):
        seen.append(loads.clone())
        return loads * 2  # as if another rank had routed the same tokens

    imbalance = model.update_expert_biases(reduce_load)
    assert len(seen) == 1 and seen[0].shape == (2, 4) and seen[0].sum(-1).tolist() == [18.0, 18.0]
    assert float(imbalance) == pytest.approx(float((seen[0].max(-1).values / seen[0].mean(-1)).mean()))
    assert all(layer.moe.tokens_per_expert is None for layer in list(model.layers.values())[1:])
    assert build(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=4)).update_expert_biases() is None
