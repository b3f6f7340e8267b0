"""LoRA fine-tuning through the launcher, from a Hugging Face directory given as trainer.init_from (a tiny random
Llama saved by transformers, with a tokenizer): its architecture becomes the run's model, its weights the frozen
base, and only the adapters train; ddp, fsdp, tp, cp and pp on 2 ranks equal one process over 10 steps (plain
pretraining shards: the SFT data is another issue's); kill -9 and a relaunch resume exactly; the optimizer holds
the adapters only, and its state is their fraction of full fine-tuning's (measured from its state tensors)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from launcher_testing import checkpoint_complete, launch, losses, start_train, tiny_overrides, wait_for

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

STEPS = 10
LORA = {
    "model.lora.rank": 4,
    "model.lora.alpha": 8,
    "model.lora.targets": "[q,k,v,o,gate,up,down]",
    "optim.lr": 0.01,
    "trainer.checkpoint_every": 4,
}


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory) -> Path:
    """A tiny random Llama over the shards' 256-token vocabulary, with a word-level tokenizer.json."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    directory = tmp_path_factory.mktemp("hf") / "tiny-llama"
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer = Tokenizer(WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def lora_overrides(shards: Path, hf_base: Path, run_dir: Path, **extra) -> list[str]:
    return tiny_overrides(shards, run_dir, max_steps=STEPS, **{"trainer.init_from": str(hf_base), **LORA, **extra})


@pytest.fixture(scope="module")
def single_lora(shards, hf_base, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("single_lora")
    launch(lora_overrides(shards, hf_base, tmp / "run"), 1, tmp)
    return tmp / "run"


def test_hf_init_from_gives_model_tokenizer_and_frozen_base(single_lora, hf_base, tmp_path):
    from model.checkpoint_io import load_model_checkpoint
    from model.hf import read_hf_model

    config = (single_lora / "config.yaml").read_text()
    assert "name: tiny-llama" in config and "hf_model_type: llama" in config  # the HF architecture, not model=tiny
    assert (single_lora / "tokenizer.json").read_bytes() == (hf_base / "tokenizer.json").read_bytes()
    state, cfg = load_model_checkpoint(single_lora)
    base, _ = read_hf_model(hf_base)
    assert cfg.lora.rank == 4 and cfg.dim == 32
    assert set(state) - set(base) == {k for k in state if k.endswith(("lora_A", "lora_B"))}
    for key, value in base.items():  # 10 steps later the base is the HF model's, bit for bit
        assert torch.equal(state[key], value), key
    assert any(state[k].abs().sum() > 0 for k in state if k.endswith("lora_B"))  # the adapters trained
    got = losses(single_lora)
    assert got[STEPS] < got[1], got

    from model.hf.cli import main as hf_cli

    assert hf_cli(["export", str(single_lora), str(tmp_path / "adapter"), "--lora", "adapter"]) == 0
    reference = transformers.AutoModelForCausalLM.from_pretrained(hf_base).eval()
    tuned = peft.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    from model import build

    ours = build(cfg).eval()
    ours.load_state_dict(state)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(tokens) - tuned(tokens).logits).abs().max().item() <= 1e-5


@pytest.mark.distributed
@pytest.mark.parametrize("layout,rtol", [("ddp", 1e-5), ("fsdp", 1e-5), ("tp", 1e-4), ("cp", 1e-4), ("pp", 1e-4)])
def test_lora_layouts_match_one_process(single_lora, shards, hf_base, tmp_path, layout, rtol):
    launch(lora_overrides(shards, hf_base, tmp_path / "run", parallel=layout), 2, tmp_path)
    got, want = losses(tmp_path / "run"), losses(single_lora)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step in range(1, STEPS + 1):
        assert abs(got[step] - want[step]) <= rtol * abs(want[step]), (layout, step, got[step], want[step])


@pytest.mark.distributed
def test_bf16_base_under_fsdp_matches_one_process(shards, hf_base, tmp_path):
    """model.lora.base_dtype=bf16: the adapted projections' frozen weights held in bf16 (FSDP2 shards a unit of
    bf16 frozen and fp32 trained parameters), the same losses as one process holding them so."""
    runs = {}
    for nproc, layout in ((1, "single"), (2, "fsdp")):
        run_dir = tmp_path / layout
        launch(
            lora_overrides(shards, hf_base, run_dir, parallel=layout, **{"model.lora.base_dtype": "bf16"}),
            nproc,
            tmp_path,
        )
        runs[layout] = losses(run_dir)
    for step in range(1, STEPS + 1):
        assert abs(runs["fsdp"][step] - runs["single"][step]) <= 1e-5 * abs(runs["single"][step]), (step, runs)
    from model.checkpoint_io import load_model_checkpoint

    state, _ = load_model_checkpoint(tmp_path / "fsdp")
    assert state["layers.0.attention.wq.weight"].dtype == torch.bfloat16
    assert state["layers.0.attention.wq.lora_A"].dtype == torch.float32


def test_lora_kill9_resumes_exactly(single_lora, shards, hf_base, tmp_path):
    run_dir = tmp_path / "run"
    overrides = lora_overrides(shards, hf_base, run_dir)
    proc = start_train(overrides, tmp_path, "killed.log")
    try:
        wait_for(lambda: checkpoint_complete(run_dir, 4), 150, "the step-4 checkpoint", [proc])
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped_at = max(int(p.parent.name[5:]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))
    assert stopped_at < STEPS
    result = launch(overrides, 1, tmp_path)
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{stopped_at:08d}'}" in result.stdout + result.stderr
    got, want = losses(run_dir), losses(single_lora)
    for step in range(stopped_at + 1, STEPS + 1):
        assert got[step] == want[step], (step, got[step], want[step])


def _optimizer_state_bytes(model_cfg: dict) -> tuple[int, set[int], torch.nn.Module]:
    """Bytes of AdamW's state tensors after one step of `model_cfg`, and the ids of the parameters it holds."""
    from launcher.config import OptimConfig
    from launcher.optim import build_optimizer
    from model import build

    torch.manual_seed(0)
    model = build(model_cfg)
    optimizer = build_optimizer(model, OptimConfig(), "cpu")
    model(torch.randint(0, 64, (2, 16)), labels=torch.randint(0, 64, (2, 16))).backward()
    optimizer.step()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.ndim > 0)
    return state, held, model


def test_optimizer_holds_only_adapters_and_their_share_of_the_state():
    from model.lora import trainable_fraction

    plain = {"vocab_size": 64, "dim": 64, "n_layers": 2, "n_heads": 4}
    full_bytes, _, _ = _optimizer_state_bytes(plain)
    lora_bytes, held, model = _optimizer_state_bytes({**plain, "lora": {"rank": 4, "targets": ["q", "v"]}})
    adapters = {id(p) for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert held == adapters
    trainable, total = trainable_fraction(model)
    # Two fp32 moments per trained element in both: the adapters' elements over the full model's (= the base's)
    assert lora_bytes / full_bytes == pytest.approx(trainable / (total - trainable), rel=1e-9)
    assert lora_bytes < full_bytes / 10, (lora_bytes, full_bytes)
    print(json.dumps({"full_state_bytes": full_bytes, "lora_state_bytes": lora_bytes}))


@pytest.mark.parametrize("layout,ranks", [("fsdp", 2), ("fsdp_tp", 4)])
def test_dry_run_of_lora_matches_the_estimate(layout, ranks):
    """Built on the meta device (launcher/dry_run.py): a bf16 base holds weights only, the adapters (split or
    replicated under tensor parallel as parallel/tensor.py places them) gradients and AdamW state, as the
    estimate sizes them."""
    from launcher.dry_run import dry_run

    report = dry_run(
        [
            "cluster.gpus_per_node=0",
            f"cluster.ranks_per_node={ranks}",
            f"parallel={layout}",
            "model=llama3_1b",
            "data=synthetic",
            "data.seq_len=1024",
            "trainer.micro_batch_size=1",
            f"trainer.global_batch_size={ranks}",
            "model.lora.rank=16",
            "model.lora.base_dtype=bf16",
            "model.lora.targets=[q,k,v,o,gate,up,down]",
        ]
    )
    for rank in report.ranks:
        for key in ("weights", "gradients", "optimizer"):
            assert rank.built[key] == pytest.approx(rank.estimated[key], rel=0.01), (rank.rank, key)
        assert rank.built["optimizer"] < rank.built["weights"] / 10


def test_hf_tokenizer_decodes_samples_when_the_data_has_none(hf_base, tmp_path):
    """Synthetic data brings no tokenizer: the HF directory's encodes the sample prompt and decodes the sample."""
    run_dir = tmp_path / "run"
    result = launch(
        [
            f"trainer.init_from={hf_base}",
            "data=synthetic",
            "data.seq_len=32",
            f"trainer.run_dir={run_dir}",
            "trainer.max_steps=2",
            "schedule.warmup_steps=1",
            "trainer.sample_every=2",
            "trainer.sample_prompt=w1 w2",
            "trainer.sample_tokens=4",
            "trainer.global_batch_size=4",
            "trainer.micro_batch_size=4",
            "trainer.eval_every=0",
            "logging.wandb.mode=disabled",
            "logging.plot=false",
            "trainer.progress_bar=false",
        ],
        1,
        tmp_path,
    )
    samples = [line for line in (result.stdout + result.stderr).splitlines() if "| sample w1 w2w" in line]
    assert samples, result.stderr[-3000:]
    assert (run_dir / "tokenizer.json").read_bytes() == (hf_base / "tokenizer.json").read_bytes()
