"""One training step in-process: fp32, bf16 autocast and fp16 with dynamic loss scaling all learn, gradient
accumulation equals one big batch, and clipping bounds the update."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

import model as model_lib
from launcher.optim import build_optimizer
from launcher.trainer import StepContext, forward_backward, optimizer_step
from model.config import ModelConfig
from parallel import ParallelConfig, ParallelDims

MODEL = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=32, multiple_of=32)
OPTIM = SimpleNamespace(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay_norms_and_biases=False,
                        decay_embeddings=False, fused=None)


def setup(precision: str, grad_accum: int = 1):
    torch.manual_seed(0)
    net = model_lib.build(MODEL)
    net.init_weights()
    dims = ParallelDims.from_config(ParallelConfig(), 1, model_cfg=MODEL, seq_len=16)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    ctx = StepContext(dims, ParallelConfig(), MODEL, torch.device("cpu"), precision, grad_accum, scaler)
    return net, build_optimizer(net, OPTIM, "cpu"), ctx


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    start = torch.randint(0, 64, (n, 1), generator=g)
    return (start + torch.arange(17)) % 64  # learnable: next token = previous + 1


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_learns(precision):
    net, opt, ctx = setup(precision)
    data = batch()
    losses = []
    for _ in range(15):
        losses.append(forward_backward(net, data, ctx).item())
        norm = optimizer_step(net, opt, ctx, grad_clip=1.0)
        assert torch.isfinite(norm)
    assert losses[-1] < losses[0] - 0.5, losses
    if precision == "fp16":
        assert ctx.scaler.get_scale() > 0


def test_accumulated_micro_batches_equal_one_batch():
    net_a, opt_a, ctx_a = setup("fp32", grad_accum=1)
    net_b, opt_b, ctx_b = setup("fp32", grad_accum=4)
    data = batch(8)
    forward_backward(net_a, data, ctx_a)
    for micro in data.split(2):
        forward_backward(net_b, micro, ctx_b)
    for (name, a), b in zip(net_a.named_parameters(), net_b.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_clipping_bounds_the_global_norm():
    net, opt, ctx = setup("fp32")
    before = copy.deepcopy(net.state_dict())
    forward_backward(net, batch(), ctx)
    raw = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters()))
    norm = optimizer_step(net, opt, ctx, grad_clip=1e-3)
    assert norm.item() == pytest.approx(raw.item(), rel=1e-4)  # the pre-clip norm is what gets logged
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
