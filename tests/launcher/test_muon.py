"""optim=muon: one step equals Muon written from the paper's equations, the parameter split, expert stacks,
torch.optim.Muon's semantics, checkpoint round trip and the config rules (launcher/muon.py, launcher/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import model as model_pkg
from launcher.config import MuonConfig, OptimConfig
from launcher.muon import Muon, newton_schulz
from launcher.optim import Optimizers, muon_parameters
from model.config import ModelConfig, MoEConfig

LR, WD, MU = 0.01, 0.1, 0.95


def tiny_model(**overrides) -> nn.Module:
    cfg = dict(name="t", vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48, max_seq_len=16)
    torch.manual_seed(0)
    net = model_pkg.build(ModelConfig(**{**cfg, **overrides}))
    net.init_weights()
    return net


def muon_config(**muon) -> OptimConfig:
    return OptimConfig(name="muon", lr=LR, weight_decay=WD, muon=MuonConfig(**muon))


def reference_ns(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic Newton-Schulz iteration as Keller Jordan's post writes it: X0 = G / ||G||_F (transposed if tall),
    X_{k+1} = a X_k + b (X_k X_k^T) X_k + c (X_k X_k^T)^2 X_k with (a, b, c) = (3.4445, -4.7750, 2.0315)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    transposed = g.shape[0] > g.shape[1]
    x = g.T if transposed else g
    x = x / max(float(torch.linalg.norm(x)), 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + b * (s @ x) + c * (s @ s @ x)
    return x.T if transposed else x


def reference_step(model: nn.Module, grads: dict[str, torch.Tensor], matrices: set[str]) -> dict[str, torch.Tensor]:
    """The weights after one step from zero optimizer state: Muon (Nesterov, match_rms_adamw lr) for `matrices`,
    AdamW (bias-corrected, decoupled decay only on non-embedding matrices) for the rest."""
    out = {}
    for name, w in model.named_parameters():
        g = grads[name]
        if name in matrices:
            buffer = (1 - MU) * g  # B1 = mu B0 + (1 - mu) g with B0 = 0
            update = g + MU * (buffer - g)  # Nesterov
            lr = LR * 0.2 * math.sqrt(max(w.shape))
            out[name] = w * (1 - LR * WD) - lr * reference_ns(update)
        else:
            m_hat, v_hat = g, g * g  # first step: (1 - beta) g / (1 - beta)
            decay = WD if w.ndim >= 2 and "embeddings" not in name else 0.0
            out[name] = w * (1 - LR * decay) - LR * m_hat / (v_hat.sqrt() + 1e-8)
    return out


def backward(model: nn.Module, seed: int = 1) -> None:
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
    model(tokens[:, :-1], labels=tokens[:, 1:]).backward()


def test_one_step_equals_the_reference_written_from_the_equations():
    model = tiny_model()
    optimizers = Optimizers([model], muon_config(), "cpu")
    backward(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ids = {id(p) for p in optimizers.optimizers[-1].param_groups[0]["params"]}
    matrices = {n for n, p in model.named_parameters() if id(p) in ids}
    want = reference_step(model, grads, matrices)
    optimizers.step()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), want[name], rtol=0, atol=1e-5, msg=name)


def test_split_matrices_to_muon_and_the_rest_to_adamw():
    model = tiny_model(moe=MoEConfig(num_experts=4, top_k=2, shared_expert_gate=True, num_shared_experts=1))
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = {names[id(p)] for p in muon_parameters(model, ["output.weight"])}
    assert "layers.0.attention.wq.weight" in chosen and "layers.1.moe.experts.w1" in chosen, chosen
    assert not any("embeddings" in n or "norm" in n or n == "output.weight" or "gate.weight" in n for n in chosen)
    assert "output.weight" in {names[id(p)] for p in muon_parameters(model, [])}
    assert not {n for n in chosen if "attention" in n} & {names[id(p)] for p in muon_parameters(model, ["*attention*"])}


def test_expert_stack_is_orthogonalised_per_expert():
    torch.manual_seed(0)
    stack = nn.Parameter(torch.randn(3, 8, 5))
    singles = [nn.Parameter(stack.detach()[e].clone()) for e in range(3)]
    stack.grad = torch.randn(3, 8, 5)
    for e, p in enumerate(singles):
        p.grad = stack.grad[e].clone()
    Muon([stack], lr=LR, weight_decay=WD).step()
    Muon(singles, lr=LR, weight_decay=WD).step()
    for e, p in enumerate(singles):
        torch.testing.assert_close(stack.detach()[e], p.detach(), rtol=0, atol=1e-6)


def test_newton_schulz_pushes_singular_values_towards_one():
    g = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(newton_schulz(g, 5))
    assert 0.5 < singular.min() and singular.max() < 1.5, singular  # Keller Jordan: roughly uniform in (0.5, 1.5)
    torch.testing.assert_close(newton_schulz(g, 5), reference_ns(g), rtol=0, atol=1e-5)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
@pytest.mark.parametrize("rule", ["match_rms_adamw", "original"])
def test_plain_matrices_follow_torch_muon(rule):
    """torch.optim.Muon's algorithm step for step; torch iterates in bfloat16, so compare at bfloat16's precision."""
    torch.manual_seed(0)
    ours, theirs = nn.Parameter(torch.randn(24, 16)), nn.Parameter(torch.randn(24, 16))
    theirs.data.copy_(ours.data)
    ours_opt = Muon([ours], lr=0.02, weight_decay=WD, ns_dtype="bfloat16", lr_rule=rule)
    theirs_opt = torch.optim.Muon([theirs], lr=0.02, weight_decay=WD, adjust_lr_fn=rule)
    for step in range(3):
        grad = torch.randn(24, 16, generator=torch.Generator().manual_seed(step))
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        ours_opt.step()
        theirs_opt.step()
    moved = (theirs.detach() - torch.randn(24, 16, generator=torch.Generator().manual_seed(0))).abs().max()
    assert moved > 0.01
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=2e-3)
    torch.testing.assert_close(ours_opt.state[ours]["momentum_buffer"], theirs_opt.state[theirs]["momentum_buffer"])


def test_checkpoint_round_trip_continues_identically():
    model, copy = tiny_model(), tiny_model()
    optimizers = Optimizers([model], muon_config(), "cpu")
    for seed in (1, 2):
        backward(model, seed)
        optimizers.step()
        optimizers.zero_grad()
    state = optimizers.state_dict()
    assert any(k.endswith(".momentum_buffer") for k in state) and any(k.endswith(".exp_avg_sq") for k in state)
    assert not any(k.endswith("wq.weight.exp_avg") for k in state)
    copy.load_state_dict(model.state_dict())
    restored = Optimizers([copy], muon_config(), "cpu")
    restored.load_state_dict({k: v.clone() for k, v in state.items()})
    for net, opt in ((model, optimizers), (copy, restored)):
        backward(net, 3)
        opt.step()
    for (name, a), b in zip(model.named_parameters(), copy.parameters()):
        assert torch.equal(a, b), name


def test_muon_refuses_a_vector():
    with pytest.raises(ValueError, match="route it to AdamW"):
        Muon([nn.Parameter(torch.zeros(4))], lr=LR, weight_decay=WD)


def test_a_part_with_nothing_for_one_optimizer_goes_without_it():
    """Pipeline stages: one holding only an embedding and a norm gets AdamW alone, one holding only a hidden matrix
    gets Muon alone, and both checkpoint through the same by-name path."""
    stages = [nn.Sequential(nn.Embedding(8, 4), nn.LayerNorm(4)), nn.Sequential(nn.Linear(4, 4, bias=False))]
    optimizers = Optimizers(stages, muon_config(), "cpu")
    assert [type(o).__name__ for o in optimizers.optimizers] == ["AdamW", "Muon"]
    for stage in stages:
        for p in stage.parameters():
            p.grad = torch.ones_like(p)
    optimizers.step()
    keys = set(optimizers.state_dict())
    assert "state.0.weight.exp_avg" in keys and "state.0.weight.momentum_buffer" in keys, keys
