"""The default CPU model (configs/model/tiny.yaml) learns: on a structured synthetic corpus the loss falls far
below ln(vocab) within a couple of hundred CPU steps."""

import math
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from model import build
from model.config import ModelConfig

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml"


class MarkovCorpus:
    """A sparse Markov chain: 128 of the vocabulary's tokens are used, and each is followed by its fixed successor
    with probability 0.9, else by a random used token. Its entropy is ~0.8 nats per token, far below ln(vocab),
    and learning it needs the embeddings, the head and the optimizer all to work."""

    def __init__(self, vocab: int, generator: torch.Generator, used: int = 128, stay: float = 0.9) -> None:
        self.generator = generator
        self.tokens = torch.randperm(vocab, generator=generator)[:used]
        self.successor = torch.randperm(used, generator=generator)
        self.used, self.stay = used, stay

    def sample(self, n: int, length: int) -> torch.Tensor:
        state = torch.randint(0, self.used, (n,), generator=self.generator)
        rows = [state]
        for _ in range(length - 1):
            follow = torch.rand(n, generator=self.generator) < self.stay
            jump = torch.randint(0, self.used, (n,), generator=self.generator)
            state = torch.where(follow, self.successor[state], jump)
            rows.append(state)
        return self.tokens[torch.stack(rows, dim=1)]


@pytest.mark.usefixtures("single_thread")
def test_tiny_loss_falls_well_below_uniform():
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONFIG))
    torch.manual_seed(0)
    model = build(cfg)
    vocab = model.cfg.vocab_size
    corpus = MarkovCorpus(vocab, torch.Generator().manual_seed(0))
    steps, batch, seqlen = 150, 8, 32
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
    losses = []
    began = time.monotonic()
    for _ in range(steps):
        data = corpus.sample(batch, seqlen + 1)
        loss = model(data[:, :-1], data[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    elapsed = time.monotonic() - began
    uniform = math.log(vocab)
    assert abs(losses[0] - uniform) < 0.5, f"initial loss {losses[0]:.2f} should be near ln(V) = {uniform:.2f}"
    final = sum(losses[-10:]) / 10
    assert final < 0.25 * uniform, f"loss only fell to {final:.2f} (ln V = {uniform:.2f}) in {steps} steps"
    held_out = corpus.sample(64, seqlen + 1)
    with torch.no_grad():
        assert model(held_out[:, :-1], held_out[:, 1:]).item() < 0.25 * uniform
    print(f"tiny: loss {losses[0]:.2f} -> {final:.2f} in {steps} steps, {elapsed:.1f} s")
