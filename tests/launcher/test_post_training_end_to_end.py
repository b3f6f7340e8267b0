"""The whole life after pretraining, on CPU, with the commands the README gives: import a tiny Hugging Face model,
SFT it with LoRA on a small chat set (pipeline=sft, the sft_lora recipe), export it merged, DPO on a small
preference set from that export (the preference command, the dpo recipe: fresh adapters, the SFT model as the
reference), export the DPO adapter for peft, load it with `peft.PeftModel.from_pretrained` on the SFT model and
generate. Every stage is a subprocess, as a user runs it; the adapter's logits under peft equal Loom's."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chat_testing import TEXTS, hf_tokenizer_dir, write_jsonl
from launcher_testing import REPO, child_env

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

SMALL = [
    "data.seq_len=32",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=4",
    "trainer.max_steps=6",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.eval_batches=0",
    "trainer.sample_every=-1",
    "trainer.checkpoint_every=6",
    "trainer.progress_bar=false",
    "schedule.warmup_steps=1",
    "logging.wandb.mode=disabled",
    "logging.plot=false",
    "model.lora.rank=4",
    "model.lora.alpha=8",
    "optim.lr=0.01",
]


def run(tmp: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=child_env(tmp), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def sentence(rng: random.Random) -> str:
    words = " ".join(TEXTS).split()
    return " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))


def test_import_sft_with_lora_dpo_export_an_adapter_load_it_in_peft_and_generate(tmp_path):
    rng = random.Random(0)
    base = hf_tokenizer_dir(tmp_path / "base")  # a ChatML chat template
    tokenizer = transformers.AutoTokenizer.from_pretrained(base)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(base)

    # SFT with LoRA on conversations
    chats = [
        {"messages": [{"role": "user", "content": sentence(rng)}, {"role": "assistant", "content": sentence(rng)}]}
        for _ in range(120)
    ]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    sft_data = tmp_path / "sft_data"
    run(
        tmp_path,
        "data_pipeline",
        "run",
        "pipeline=sft",
        "input_format=chat",
        f"input={tmp_path / 'chats.jsonl'}",
        f"output={sft_data}",
        f"pipeline.steps.1.params.tokenizer={base}",
        "tasks=1",
    )
    eos = json.loads((sft_data / "tokens" / "shard-00000.json").read_text())["tokenizer"]["eos_id"]
    sft_run = tmp_path / "sft_run"
    run(
        tmp_path,
        "launcher.train",
        "--config-name",
        "sft_lora",
        f"trainer.init_from={base}",
        f"data.path={sft_data / 'tokens'}",
        f"model.document_mask_eos_id={eos}",
        f"trainer.run_dir={sft_run}",
        *SMALL,
    )
    merged = tmp_path / "sft_merged"
    run(tmp_path, "model.hf", "export", str(sft_run), str(merged), "--lora", "merged")

    # DPO from the merged SFT model: fresh adapters, the SFT model itself as the reference
    pairs = [
        {
            "prompt": [{"role": "user", "content": sentence(rng)}],
            "chosen": [{"role": "assistant", "content": "Paris is the capital of France."}],
            "rejected": [{"role": "assistant", "content": sentence(rng)}],
        }
        for _ in range(60)
    ]
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    prefs = tmp_path / "prefs"
    run(
        tmp_path,
        "data_pipeline",
        "preference",
        f"input={tmp_path / 'pairs.jsonl'}",
        f"output={prefs}",
        f"tokenizer={merged}",
    )
    dpo_run = tmp_path / "dpo_run"
    run(
        tmp_path,
        "launcher.train",
        "--config-name",
        "dpo",
        f"trainer.init_from={merged}",
        f"data.path={prefs}",
        f"trainer.run_dir={dpo_run}",
        "data.val_fraction=0.1",
        *SMALL,
    )
    records = [json.loads(line) for line in (dpo_run / "metrics.jsonl").read_text().splitlines()]
    figures = [r for r in records if "dpo/accuracy" in r]
    assert len(figures) == 6 and figures[-1]["dpo/margins"] > figures[0]["dpo/margins"]  # the preference is learnt
    adapter = tmp_path / "dpo_adapter"
    run(tmp_path, "model.hf", "export", str(dpo_run), str(adapter), "--lora", "adapter")

    # peft loads the adapter on the SFT model: Loom's logits, and it generates
    from model import build
    from model.checkpoint_io import load_model_checkpoint

    sft_model = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tuned = peft.PeftModel.from_pretrained(sft_model, adapter).eval()
    state, cfg = load_model_checkpoint(dpo_run)
    ours = build(cfg).eval()
    ours.load_state_dict(state)
    sft_tokenizer = transformers.AutoTokenizer.from_pretrained(merged)
    prompt = sft_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    with torch.no_grad():
        assert (tuned(prompt).logits - ours(prompt)).abs().max().item() <= 1e-5
        generated = tuned.generate(prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > prompt.shape[1]
    assert isinstance(sft_tokenizer.decode(generated[0, prompt.shape[1] :]), str)
