"""The layout estimate with LoRA (model.lora): the frozen base keeps its weights, only the adapters have gradients
and optimizer state, and the report says how many they are and what that saves against full fine-tuning."""

from __future__ import annotations

import dataclasses

import pytest
from test_estimate import training_run

from model.config import LoRAConfig, ModelConfig
from model.counting import lora_params, parameter_counts
from parallel.estimate import estimate, estimate_memory

MODEL = ModelConfig(vocab_size=128, dim=64, n_layers=2, n_heads=4, hidden_dim=128)
LORA = dataclasses.replace(MODEL, lora=LoRAConfig(rank=4, targets=["q", "k", "v", "o", "gate", "up", "down"]))


@pytest.mark.parametrize("parallel", [{}, {"dp_shard": -1}], ids=["one_gpu", "fsdp4"])
def test_only_adapters_have_gradients_and_optimizer_state(parallel: dict) -> None:
    world = 4 if parallel else 1
    full, lora = (
        estimate_memory(training_run(MODEL, world, **parallel)),
        estimate_memory(training_run(LORA, world, **parallel)),
    )
    share = lora_params(LORA) / parameter_counts(MODEL).total
    assert lora.optimizer == pytest.approx(full.optimizer * share)
    assert lora.gradients == pytest.approx(full.gradients * share)
    if not parallel:  # the base plus the adapters (FSDP adds its gathered layers, adapters included)
        assert lora.weights == pytest.approx(full.weights * (1 + share))
    assert lora.weights > full.weights


def test_report_names_the_adapters_and_the_saving() -> None:
    big = dataclasses.replace(LORA, dim=1024, hidden_dim=2048, n_layers=8, n_heads=8)
    lora = estimate(training_run(big), gpu="H100 SXM", tokens=1e6, mfu=0.4)["lora"]
    assert lora["params"] == 8 * 4 * (4 * (1024 + 1024) + 3 * (1024 + 2048))
    assert lora["optimizer_saved_gib_per_gpu"] > 0 and lora["gradients_saved_gib_per_gpu"] > 0
    assert estimate(training_run(MODEL), gpu="H100 SXM", tokens=1e6, mfu=0.4)["lora"] is None


def test_bf16_base_halves_the_adapted_weights() -> None:
    from model.counting import lora_layer_params

    narrow = dataclasses.replace(LORA, lora=dataclasses.replace(LORA.lora, base_dtype="bf16"))
    wide_bytes = estimate_memory(training_run(LORA)).weights
    adapted = sum(sum(lora_layer_params(LORA, i, base=True)) for i in range(LORA.n_layers))
    assert estimate_memory(training_run(narrow)).weights == wide_bytes - 2 * adapted
