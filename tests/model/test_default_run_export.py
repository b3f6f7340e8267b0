"""A short run of the default config (`make train`: model=tiny on the embedded corpus) exported with
`python -m model.hf export` is a complete Hugging Face directory: AutoTokenizer and AutoModelForCausalLM load it
with no extra step, and `pipeline("text-generation", model=dir)` continues a prompt greedily exactly as
`python -m model.generate <run_dir>` does (the run keeps its data's tokenizer as <run_dir>/tokenizer.json)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMPT = "The history of the"


def child_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC_", "WANDB_"))
    }
    env.update(WANDB_MODE="disabled", WANDB_DIR=str(tmp_path / "wandb"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run(tmp_path: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=child_env(tmp_path), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("default_run")
    run_dir = tmp / "run"
    run(
        tmp,
        "-m",
        "launcher.train",
        f"trainer.run_dir={run_dir}",
        "trainer.max_steps=8",
        "trainer.log_every=4",
        "trainer.eval_every=0",
        "trainer.eval_batches=0",
        "trainer.sample_every=-1",
        "schedule.warmup_steps=2",
        "trainer.progress_bar=false",
        "logging.wandb.mode=disabled",
        "logging.plot=false",
    )
    return run_dir


def test_exported_default_run_generates_through_the_hf_pipeline_like_model_generate(default_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from model.hf import export_checkpoint

    assert (default_run / "tokenizer.json").is_file()  # copied from beside the shards at start
    hf_dir = export_checkpoint(default_run, tmp_path / "hf")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ):
        assert (hf_dir / name).is_file(), name
    config = json.loads((hf_dir / "config.json").read_text())
    ours = Tokenizer.from_file(str(default_run / "tokenizer.json"))
    eos = ours.token_to_id("<|endoftext|>")
    assert config["eos_token_id"] == config["bos_token_id"] == config["pad_token_id"] == eos

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tokenizer(PROMPT)["input_ids"] == ours.encode(PROMPT).ids
    assert tokenizer.eos_token == "<|endoftext|>"
    pipe = transformers.pipeline("text-generation", model=str(hf_dir))
    hf_text = pipe(PROMPT, max_new_tokens=16, do_sample=False, return_full_text=False)[0]["generated_text"]

    done = run(
        tmp_path,
        "-m",
        "model.generate",
        str(default_run),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "16",
        "--format",
        "json",
        timeout=180,
    )
    result = json.loads(done.stdout)
    assert result["text"] == [hf_text]
    assert hf_text.strip() and 1 <= len(result["ids"][0]) <= 16, "an empty continuation compares nothing"

    # Imported back, the checkpoint keeps the tokenizer beside it: text prompts work on it as on the run.
    from model.generate import main
    from model.hf import import_checkpoint

    imported = import_checkpoint(hf_dir, tmp_path / "imported")
    assert (imported / "tokenizer.json").is_file() and (imported / "tokenizer_config.json").is_file()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(imported), "--prompt", PROMPT, "--max-new-tokens", "16", "--format", "json"]) == 0
    assert json.loads(out.getvalue())["text"] == [hf_text]


def test_generate_refuses_a_path_that_is_no_model(tmp_path):
    from model.generate import main

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--prompt-ids", "1 2"]) == 2
    assert main([str(tmp_path / "missing"), "--prompt-ids", "1 2"]) == 2
