"""The model issue's contract between `model.hf` and the launcher: a run exported to Hugging Face format and imported
back is a checkpoint that `trainer.init_from=` starts from, with exactly the weights of the original run."""

from __future__ import annotations

import json
import subprocess

from launcher_testing import PYTHON, REPO, child_env, losses, run_train, tiny_overrides


def _hf(tmp_path, *args: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "model.hf", *args],
        cwd=REPO,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def test_exported_then_imported_run_initialises_training_like_the_original(shards, single_baseline, tmp_path):
    hf_dir, imported = tmp_path / "hf", tmp_path / "imported"
    _hf(tmp_path, "export", str(single_baseline), str(hf_dir))
    assert json.loads((hf_dir / "config.json").read_text())["model_type"] == "llama"
    _hf(tmp_path, "import", str(hf_dir), str(imported))

    runs = {}
    for name, source in (("original", single_baseline), ("imported", imported)):
        run_dir = tmp_path / f"run_{name}"  # not the imported checkpoint's own directory
        result = run_train(tiny_overrides(shards, run_dir, max_steps=3) + [f"trainer.init_from={source}"], tmp_path)
        assert result.returncode == 0, result.stderr[-4000:]
        runs[name] = losses(run_dir)
    assert sorted(runs["imported"]) == [1, 2, 3]
    for step in (1, 2, 3):
        assert abs(runs["imported"][step] - runs["original"][step]) <= 1e-6, (step, runs)
    # and they start from trained weights, not from a fresh initialisation
    assert runs["imported"][1] < losses(single_baseline)[1] - 0.3
