"""DPO through `python -m launcher.train` (trainer.objective=dpo, data=preference) from a tiny random Hugging Face
Llama: the figures are logged every step and the first step's loss is ln 2 (policy = reference); the preferences are
learnt; DDP and FSDP on 2 ranks equal one process (a frozen copy and adapters_off as reference); a resumed run
continues exactly; what DPO cannot run is refused at validation naming the key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from launcher_testing import launch
from preference_fixtures import save_tiny_llama, write_pairs

from launcher.config import TrainConfig
from launcher.validation import ConfigError, validate

pytest.importorskip("transformers")

STEPS = 6
FIGURES = ("dpo/rewards_chosen", "dpo/rewards_rejected", "dpo/margins", "dpo/accuracy")


@pytest.fixture(scope="module")
def preference(tmp_path_factory) -> dict[str, Path]:
    from data_pipeline.preference import build_preference_shards

    root = tmp_path_factory.mktemp("dpo_train")
    policy = save_tiny_llama(root / "hf", seed=0)
    build_preference_shards([write_pairs(root / "pairs.jsonl", 18, seed=5)], root / "shards", policy)
    return {"hf": policy, "shards": root / "shards"}


def dpo_overrides(preference: dict, run_dir: Path, **extra) -> list[str]:
    args = {
        "data": "preference",
        "data.path": preference["shards"],
        "data.seq_len": 20,
        "data.val_fraction": 0.1,
        "trainer.objective": "dpo",
        "trainer.init_from": preference["hf"],
        "trainer.run_dir": run_dir,
        "trainer.max_steps": STEPS,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 2,
        "trainer.log_every": 1,
        "trainer.eval_every": 3,
        "trainer.eval_batches": 1,
        "trainer.sample_every": -1,
        "trainer.checkpoint_every": 3,
        "trainer.progress_bar": "false",
        "trainer.dist_timeout_s": 60,
        "logging.wandb.mode": "disabled",
        "logging.plot": "false",
        "optim.lr": 0.01,
        "schedule.name": "constant",  # a run stopped early (max_steps=3) has the same lr as the full one
        "schedule.warmup_steps": 1,
        **extra,
    }
    return [f"{key}={value}" for key, value in args.items()]


LORA = {"model.lora.rank": 4, "model.lora.alpha": 8, "dpo.reference": "adapters_off", "optim.lr": 0.03}


def records(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows if "loss" in row}


@pytest.fixture(scope="module")
def single(preference, tmp_path_factory) -> dict[str, Path]:
    """One-process runs: full fine-tuning against a frozen copy, and LoRA against the adapters-off base."""
    tmp = tmp_path_factory.mktemp("dpo_single")
    launch(dpo_overrides(preference, tmp / "frozen_copy"), 1, tmp)
    launch(dpo_overrides(preference, tmp / "adapters_off", **LORA), 1, tmp)
    return {"frozen_copy": tmp / "frozen_copy", "adapters_off": tmp / "adapters_off"}


@pytest.mark.parametrize("reference", ["frozen_copy", "adapters_off"])
def test_one_process_logs_dpo_figures_and_learns_the_preferences(single, reference):
    got = records(single[reference])
    assert sorted(got) == list(range(1, STEPS + 1))
    for row in got.values():
        assert all(math.isfinite(row[name]) for name in FIGURES), row
        assert 0.0 <= row["dpo/accuracy"] <= 1.0
        assert row["dpo/margins"] == pytest.approx(row["dpo/rewards_chosen"] - row["dpo/rewards_rejected"], abs=1e-6)
    first, last = got[1], got[STEPS]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as its reference
    assert first["dpo/margins"] == pytest.approx(0.0, abs=1e-6)
    assert last["dpo/margins"] > 0.05 and last["dpo/accuracy"] >= 0.75 and last["loss"] < math.log(2) - 0.02, last
    assert "val_loss" in got[3] and "val_loss" in got[STEPS]  # the held-out pairs' DPO loss


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("layout", "reference"), [("parallel.dp_replicate", "frozen_copy"), ("parallel.dp_shard", "adapters_off")]
)
def test_two_ranks_equal_one_process(preference, single, tmp_path, layout, reference):
    extra = {layout: 2, **(LORA if reference == "adapters_off" else {})}
    launch(dpo_overrides(preference, tmp_path / "run", **extra), 2, tmp_path)
    ours, one = records(tmp_path / "run"), records(single[reference])
    for step in range(1, STEPS + 1):
        for name in ("loss", *FIGURES):
            assert ours[step][name] == pytest.approx(one[step][name], abs=1e-5), (step, name)


def test_a_resumed_run_continues_exactly(preference, single, tmp_path):
    """Stopped after the step-3 checkpoint and relaunched: the frozen reference is rebuilt from init_from and the
    pairs continue where they were, so steps 4-6 are the uninterrupted run's."""
    launch(dpo_overrides(preference, tmp_path / "run", **{"trainer.max_steps": 3}), 1, tmp_path)
    launch(dpo_overrides(preference, tmp_path / "run"), 1, tmp_path)
    ours, one = records(tmp_path / "run"), records(single["frozen_copy"])
    for step in (4, 5, 6):
        for name in ("loss", *FIGURES):
            assert ours[step][name] == pytest.approx(one[step][name], abs=1e-6), (step, name)


def _dpo_config(tmp_path: Path, **changes) -> TrainConfig:
    cfg = TrainConfig()
    cfg.trainer.objective, cfg.data.name, cfg.data.path = "dpo", "preference", str(tmp_path)
    cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size = 8, 2
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def test_what_dpo_cannot_run_is_refused_naming_the_key(tmp_path):
    validate(_dpo_config(tmp_path), 1)
    validate(_dpo_config(tmp_path, **{"parallel.dp_shard": 2}), 2)
    with pytest.raises(ConfigError, match="parallel.pp"):
        validate(_dpo_config(tmp_path, **{"parallel.pp": 2}), 2)
    with pytest.raises(ConfigError, match="parallel.cp"):
        validate(_dpo_config(tmp_path, **{"parallel.cp": 2}), 2)
    with pytest.raises(ConfigError, match="parallel.tp"):
        validate(_dpo_config(tmp_path, **{"parallel.tp": 2}), 2)
    with pytest.raises(ConfigError, match="dpo.reference=adapters_off needs LoRA"):
        validate(_dpo_config(tmp_path, **{"dpo.reference": "adapters_off"}), 1)
    with pytest.raises(ConfigError, match="dpo.beta"):
        validate(_dpo_config(tmp_path, **{"dpo.beta": 0.0}), 1)
    with pytest.raises(ConfigError, match="dpo.loss_type"):
        validate(_dpo_config(tmp_path, **{"dpo.loss_type": "hinge"}), 1)
    with pytest.raises(ConfigError, match="trainer.objective=dpo with data=synthetic"):
        validate(_dpo_config(tmp_path, **{"data.name": "synthetic"}), 1)
    with pytest.raises(ConfigError, match="trainer.objective=lm with data=preference"):
        validate(_dpo_config(tmp_path, **{"trainer.objective": "lm"}), 1)
    with pytest.raises(ConfigError, match="data=preference needs data.path"):
        validate(_dpo_config(tmp_path, **{"data.path": str(tmp_path / "missing")}), 1)


def test_dpo_adapter_exports_for_peft(preference, single, tmp_path):
    """The LoRA DPO run's adapter, exported as a peft directory on the HF base, computes what the run's model does
    (and differs from the base: DPO moved it), and generates."""
    import subprocess

    import torch
    from launcher_testing import PYTHON, REPO, child_env

    peft = pytest.importorskip("peft")
    import transformers

    from model import build
    from model.checkpoint_io import load_model_checkpoint

    out = tmp_path / "adapter"
    export = [PYTHON, "-m", "model.hf", "export", str(single["adapters_off"]), str(out), "--lora", "adapter"]
    result = subprocess.run(export, cwd=REPO, env=child_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    base = transformers.AutoModelForCausalLM.from_pretrained(preference["hf"], dtype=torch.float32).eval()
    tokens = torch.tensor([[4, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        base_logits = base(tokens).logits.clone()
        tuned = peft.PeftModel.from_pretrained(base, out).eval()
        state, cfg = load_model_checkpoint(single["adapters_off"])
        ours = build(cfg).eval()
        ours.load_state_dict(state)
        assert (tuned(tokens).logits - ours(tokens)).abs().max().item() <= 1e-5
        assert (tuned(tokens).logits - base_logits).abs().max().item() > 1e-3
        assert tuned.generate(tokens, max_new_tokens=4, do_sample=False).shape == (1, tokens.shape[1] + 4)
