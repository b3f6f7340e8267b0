"""MoE: dropless sorted dispatch equals a naive per-token reference; router losses have their defined values."""
import pytest
import torch
import torch.nn.functional as F

from model.blocks.moe import MoE

pytestmark = pytest.mark.usefixtures("single_thread")


def make_moe(top_k: int, *, shared: int = 0, norm_topk_prob: bool = True, num_experts: int = 4) -> MoE:
    torch.manual_seed(0)
    moe = MoE(16, 24, num_experts, top_k, norm_topk_prob=norm_topk_prob, num_shared_experts=shared)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.2)
    return moe


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert, straight from the definition."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        probs = torch.softmax(moe.router(flat[t]), dim=-1)
        weights, experts = torch.topk(probs, moe.top_k)
        if moe.norm_topk_prob:
            weights = weights / weights.sum()
        for w, e in zip(weights, experts.tolist()):
            ex = moe.experts
            hidden = F.silu(ex.w1[e] @ flat[t]) * (ex.w3[e] @ flat[t])
            out[t] += w * (ex.w2[e] @ hidden)
        if moe.shared_experts is not None:
            out[t] += moe.shared_experts(flat[t])
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    "top_k, shared, norm_topk_prob", [(1, 0, True), (2, 0, True), (2, 1, True), (3, 2, False)]
)
def test_dropless_dispatch_equals_naive_reference(top_k, shared, norm_topk_prob):
    moe = make_moe(top_k, shared=shared, norm_topk_prob=norm_topk_prob)
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), naive_moe(moe, x), rtol=1e-5, atol=1e-5)


def test_gradients_match_naive_reference():
    moe = make_moe(2, shared=1)
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
