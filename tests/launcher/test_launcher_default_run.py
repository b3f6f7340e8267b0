"""The default run (`python -m launcher.train`: model=tiny, data=embedded) writes everything a run dir promises:
config.yaml, metrics.jsonl, the loss/lr plot, a checkpoint and an offline wandb run. The fast test shortens it to
a few steps; the full one is the whole default run (what `make train` runs) and checks it learns (loss < 40% of
ln(vocab)) in minutes. It stays in the default suite: no faster test covers learning on the embedded corpus."""

from __future__ import annotations

import json
import math
import time

import yaml
from launcher_testing import run_train

from model.checkpoint_io import find_complete_checkpoints, load_model_checkpoint


def check_run_dir(run_dir, max_steps):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["name"] == "tiny" and config["data"]["name"] == "embedded"
    assert config["trainer"]["run_dir"] == str(run_dir)  # resolved, not an interpolation
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == max_steps
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "val_loss", "val_ppl"):
        assert key in records[-1], key
    assert records[-1]["mfu"] is None  # CPU: no peak FLOP/s, so no made-up MFU
    assert isinstance(records[-1].get("sample"), str) and records[-1]["sample"]
    assert (run_dir / "loss_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoints = find_complete_checkpoints(run_dir)
    assert checkpoints and checkpoints[-1].name == f"step_{max_steps:08d}"
    state, model_cfg = load_model_checkpoint(run_dir)
    assert model_cfg.name == "tiny" and "tok_embeddings.weight" in state
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs and any(p.suffix == ".wandb" for p in offline_runs[0].iterdir())
    return records


def test_short_default_run_writes_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(
        [
            f"trainer.run_dir={run_dir}",
            "trainer.max_steps=6",
            "trainer.log_every=2",
            "trainer.eval_every=3",
            "trainer.eval_batches=1",
            "trainer.sample_tokens=8",
            "schedule.warmup_steps=2",
            "trainer.progress_bar=false",
            "logging.wandb.mode=auto",
        ],
        tmp_path,
        timeout=400,
        WANDB_MODE=None,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"trainer.run_dir={run_dir}" in result.stdout
    records = check_run_dir(run_dir, 6)
    assert [r["step"] for r in records] == [2, 3, 4, 6]


def test_full_default_run_learns_in_minutes(tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    result = run_train([f"trainer.run_dir={run_dir}"], tmp_path, timeout=600, WANDB_MODE=None)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = check_run_dir(run_dir, 150)
    assert records[-1]["loss"] < 0.4 * math.log(2048), records[-1]
    assert elapsed < 240, f"default run took {elapsed:.0f} s"
