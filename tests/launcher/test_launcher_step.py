"""One training step of the torch train module, in-process: fp32, bf16 autocast and fp16 with dynamic loss scaling
all learn, gradient accumulation equals one big batch, clipping bounds the update, and a MoE model reports its
auxiliary losses."""

from __future__ import annotations

import pytest
import torch

from launcher.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig
from launcher.distributed import DistEnv
from launcher.train_modules.torch_layouts import TorchTrainModule
from launcher.validation import validate
from model.config import ModelConfig, MoEConfig

MODEL = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, max_seq_len=32, multiple_of=32)


def module(precision: str = "fp32", micro_batch: int = 8, grad_clip: float = 1.0, **model) -> TorchTrainModule:
    config = TrainConfig(
        model=ModelConfig(**{**MODEL, **model}),
        data=DataConfig(name="synthetic", seq_len=16),
        optim=OptimConfig(lr=1e-2, grad_clip=grad_clip),
        schedule=ScheduleConfig(name="constant", warmup_steps=0),
        trainer=TrainerConfig(
            run_dir="unused",
            max_steps=100,
            global_batch_size=8,
            micro_batch_size=micro_batch,
            precision=precision,
            seed=0,
        ),
    )
    return TorchTrainModule(validate(config, 1), DistEnv(0, 0, 1, torch.device("cpu")))


def batch(n=8):
    g = torch.Generator().manual_seed(1)
    start = torch.randint(0, 64, (n, 1), generator=g)
    data = (start + torch.arange(17)) % 64  # learnable: next token = previous + 1
    return data[:, :-1], data[:, 1:]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_precision_learns(precision):
    train = module(precision)
    inputs, labels = batch()
    losses = []
    for _ in range(15):
        out = train.train_step(inputs, labels)
        losses.append(out.loss.item())
        assert torch.isfinite(out.grad_norm)
    assert losses[-1] < losses[0] - 0.5, losses
    if precision == "fp16":
        assert train.log_extras()["loss_scale"] > 0


def test_accumulated_micro_batches_equal_one_batch():
    whole, accumulated = module(micro_batch=8), module(micro_batch=2)
    inputs, labels = batch(8)
    a, b = whole.train_step(inputs, labels), accumulated.train_step(inputs, labels)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(a.grad_norm, b.grad_norm, rtol=1e-5, atol=0)
    # The first Adam moment after one step is (1 - beta1) x the gradient: the same gradients, parameter by parameter.
    moments_a, moments_b = (list(m.optimizers.optimizers[0].state.values()) for m in (whole, accumulated))
    for state_a, state_b in zip(moments_a, moments_b):
        torch.testing.assert_close(state_a["exp_avg"], state_b["exp_avg"], rtol=1e-5, atol=1e-8)


def test_clipping_bounds_the_global_norm():
    unclipped, clipped = module(grad_clip=0.0), module(grad_clip=1e-3)
    start = {k: v.clone() for k, v in clipped.model.state_dict().items()}
    inputs, labels = batch()
    free, bounded = unclipped.train_step(inputs, labels), clipped.train_step(inputs, labels)
    assert bounded.grad_norm.item() == pytest.approx(free.grad_norm.item(), rel=1e-6)  # the pre-clip norm is logged
    # Adam normalises the update's size, so clipping shows in its direction only through eps: compare moments.
    first_moment = [s["exp_avg"] for s in clipped.optimizers.optimizers[0].state.values()]
    total = torch.sqrt(sum((m.double() ** 2).sum() for m in first_moment)) / (1 - 0.9)
    assert total.item() == pytest.approx(1e-3, rel=1e-3)
    assert any(not torch.equal(start[k], v) for k, v in clipped.model.state_dict().items())
    assert all(p.grad is None for p in clipped.model.parameters())


def test_moe_auxiliary_losses_are_reported():
    train = module(moe=MoEConfig(num_experts=4, top_k=2, aux_loss_weight=0.01, router_z_loss_weight=0.001))
    out = train.train_step(*batch())
    assert set(out.extra) == {"moe_aux_loss", "moe_router_z_loss", "moe_load_imbalance"}
    assert out.extra["moe_load_imbalance"].item() >= 1.0  # max / mean expert load
    # Switch balancing loss is num_experts * sum f_i P_i: 1 when perfectly balanced, so near 1 at init.
    assert 0.5 < out.extra["moe_aux_loss"].item() < 4.0
    assert out.extra["moe_router_z_loss"].item() > 0
