"""Supervised fine-tuning: conversations through the data pipeline (pipeline=sft's chat_tokenize) into masked
shards, then LoRA on a tiny random Hugging Face Llama (trainer.init_from) with document masks. The loss is the mean
over the global batch's assistant tokens, as transformers computes it with -100 labels; packed conversations lose
what each loses alone; ddp, fsdp and tp on 2 ranks and another micro-batching equal one process over 10 steps; kill
-9 and a relaunch resume exactly; full fine-tuning under ZeRO-2 equals one process; pipeline parallel refuses
loss masks."""

from __future__ import annotations

import dataclasses
import json
import random
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from chat_testing import TEXTS, hf_tokenizer_dir, write_jsonl
from launcher_testing import checkpoint_complete, launch, losses, run_train, start_train, tiny_overrides, wait_for

transformers = pytest.importorskip("transformers")

STEPS = 10
WORDS = sorted({word for text in TEXTS for word in text.replace("?", " ").replace(".", " ").split()})


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Random one- or two-exchange conversations (some with a system turn, some as prompt/completion pairs) of
    varied lengths, so micro batches count very different numbers of assistant tokens."""
    rng = random.Random(seed)

    def says(low: int, high: int) -> str:
        return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))

    rows = []
    for i in range(n):
        if i % 5 == 0:
            rows.append({"prompt": says(2, 12), "completion": says(1, 10)})
            continue
        messages = [{"role": "system", "content": says(1, 4)}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 2)):
            messages += [{"role": "user", "content": says(2, 14)}, {"role": "assistant", "content": says(1, 12)}]
        rows.append({"messages": messages})
    return rows


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> SimpleNamespace:
    """The HF directory (tiny random Llama + ChatML tokenizer) and the masked shards of 300 conversations."""
    from data_pipeline.executors.base import PipelinePlan, StepSpec
    from data_pipeline.executors.local import LocalExecutor
    from data_pipeline.readers import InputSpec

    tmp = tmp_path_factory.mktemp("sft")
    hf = hf_tokenizer_dir(tmp / "tiny-llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(hf)
    plan = PipelinePlan(
        input=InputSpec(path=str(write_jsonl(tmp / "chats.jsonl", conversations(300))), format="chat"),
        output=str(tmp / "out"),
        steps=[StepSpec("chat_tokenize", {"tokenizer": str(hf)})],
        tasks=2,
    )
    LocalExecutor(plan, workers=1, progress=lambda _: None).run()
    return SimpleNamespace(hf=hf, shards=tmp / "out" / "tokens", eos=tokenizer.eos_token_id)


def loom_model(sft: SimpleNamespace, document_mask: bool) -> torch.nn.Module:
    from model import build
    from model.hf import read_hf_model

    state, cfg = read_hf_model(sft.hf)
    model = build(dataclasses.replace(cfg, document_mask_eos_id=sft.eos if document_mask else None)).eval()
    model.load_state_dict(state)
    return model


def first_batch(sft: SimpleNamespace) -> torch.Tensor:
    """The first global batch of 8 windows of 32 tokens, with their loss masks ([8, 2, 33])."""
    from launcher.data import TokenBatches, open_dataset

    dataset = open_dataset(sft.shards, 1 << 16)
    batches = TokenBatches(dataset, seq_len=32, global_batch=8, dp_rank=0, dp_degree=1, seed=0, val_fraction=0.1)
    return batches.next_batch()


def test_the_loss_is_transformers_mean_over_the_global_batch_assistant_tokens(sft):
    """The train module's step loss (4 micro batches of 2 rows, unequal assistant counts) equals transformers' loss
    of the whole batch with -100 on every token whose mask is 0, not the mean of the micro batches' means; so does
    the held-out loss of the same rows."""
    from launcher.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig
    from launcher.data import inputs_and_labels
    from launcher.distributed import DistEnv
    from launcher.train_modules.torch_layouts import TorchTrainModule
    from launcher.validation import validate
    from model.hf import read_hf_model

    batch = first_batch(sft)
    inputs, labels = inputs_and_labels(batch)
    tokens, mask = batch[:, 0], batch[:, 1]
    assert torch.equal(labels == -100, mask[:, 1:] == 0)  # a label counts when the token it predicts does
    counts = [int((y != -100).sum()) for y in labels.split(2)]
    assert len(set(counts)) > 1, counts

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(sft.hf).eval()
    with torch.no_grad():
        want = hf_model(input_ids=tokens, labels=tokens.masked_fill(mask == 0, -100)).loss
        means = [
            hf_model(input_ids=t, labels=t.masked_fill(m == 0, -100)).loss
            for t, m in zip(tokens.split(2), mask.split(2))
        ]
    state, model_cfg = read_hf_model(sft.hf)
    config = TrainConfig(
        model=model_cfg,
        data=DataConfig(name="synthetic", seq_len=32),
        optim=OptimConfig(lr=1e-3),
        schedule=ScheduleConfig(name="constant", warmup_steps=0),
        trainer=TrainerConfig(run_dir="unused", max_steps=1, global_batch_size=8, micro_batch_size=2, seed=0),
    )
    module = TorchTrainModule(validate(config, 1), DistEnv(0, 0, 1, torch.device("cpu")))
    module.model.load_state_dict(state)
    from launcher.callbacks.val_loss import evaluate

    held_out, _ = evaluate(module, list(batch.split(3)), torch.device("cpu"))  # the held-out loss weighs alike
    assert held_out == pytest.approx(want.item(), rel=1e-5)
    got = module.train_step(inputs, labels).loss
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert abs(got - torch.stack(means).mean()) > 1e-3  # what a mean of micro-batch means would have given


def test_packed_conversations_lose_what_each_loses_alone(sft):
    from data_pipeline.formats import PackedDataset

    dataset = PackedDataset(sft.shards)
    shard = dataset.shards[0]
    ends = [int(e) for e in shard.offsets[1:] if e <= 120][:4]
    assert len(ends) >= 2, ends
    packed = torch.from_numpy(shard.tokens[: ends[-1]].astype("int64"))
    mask = torch.from_numpy(dataset.read_loss_mask(0, ends[-1]).astype("int64"))

    def counted_losses(model: torch.nn.Module, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Per next-token prediction, its CE where the predicted token counts, else 0."""
        with torch.no_grad():
            logits = model(tokens[None, :-1])[0].float()
        ce = torch.nn.functional.cross_entropy(logits, tokens[1:], reduction="none")
        return ce * token_mask[1:]

    for document_mask, should_match in ((True, True), (False, False)):
        model = loom_model(sft, document_mask)
        together = counted_losses(model, packed, mask)
        matches = []
        for start, end in zip([0, *ends[:-1]], ends):
            alone = counted_losses(model, packed[start:end], mask[start:end]).sum()
            in_pack = together[start : end - 1].sum()  # the predictions of its tokens after the first
            matches.append(torch.allclose(in_pack, alone, rtol=1e-5, atol=1e-5))
        assert all(matches) if should_match else not all(matches), (document_mask, matches)


def sft_overrides(sft: SimpleNamespace, run_dir: Path, **extra) -> list[str]:
    return tiny_overrides(
        sft.shards,
        run_dir,
        max_steps=STEPS,
        **{
            "trainer.init_from": str(sft.hf),
            "model.document_mask_eos_id": sft.eos,
            "model.lora.rank": 4,
            "model.lora.alpha": 8,
            "model.lora.targets": "[q,k,v,o,gate,up,down]",
            "optim.lr": 0.01,
            "trainer.checkpoint_every": 4,
            "trainer.eval_every": 5,  # the held-out loss over the held-out assistant tokens, at steps 5 and 10
            "trainer.eval_batches": 2,
            **extra,
        },
    )


@pytest.fixture(scope="module")
def single_sft(sft, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("single_sft")
    launch(sft_overrides(sft, tmp / "run"), 1, tmp)
    return tmp / "run"


def val_losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_loss"] for r in records if "val_loss" in r}


def test_sft_learns_the_assistant_tokens(single_sft):
    got = losses(single_sft)
    assert sorted(got) == list(range(1, STEPS + 1)) and got[STEPS] < got[1], got


@pytest.mark.distributed
@pytest.mark.parametrize(
    "layout,nproc,rtol",
    [("ddp", 2, 1e-5), ("fsdp", 2, 1e-5), ("tp", 2, 1e-4), ("micro_batch_8", 1, 1e-5)],
)
def test_sft_layouts_match_one_process(single_sft, sft, tmp_path, layout, nproc, rtol):
    extra = {"trainer.micro_batch_size": 8} if layout == "micro_batch_8" else {"parallel": layout}
    launch(sft_overrides(sft, tmp_path / "run", **extra), nproc, tmp_path)
    got, want = losses(tmp_path / "run"), losses(single_sft)
    assert sorted(got) == list(range(1, STEPS + 1)), got
    for step in range(1, STEPS + 1):
        assert abs(got[step] - want[step]) <= rtol * abs(want[step]), (layout, step, got[step], want[step])
    got_val, want_val = val_losses(tmp_path / "run"), val_losses(single_sft)
    assert sorted(want_val) == [5, 10], want_val
    for step, value in want_val.items():
        assert abs(got_val[step] - value) <= rtol * value, (layout, step, got_val[step], value)


@pytest.mark.distributed
def test_full_sft_under_zero2_matches_one_process(sft, tmp_path):
    """Full fine-tuning (LoRA is refused under DeepSpeed): ZeRO-2's engine gets each micro batch's weighted loss."""
    runs = {}
    for name, nproc, extra in (("single", 1, {}), ("zero2", 2, {"parallel": "zero2"})):
        launch(
            sft_overrides(sft, tmp_path / name, **{"model.lora.rank": 0, "optim.lr": 0.003, **extra}), nproc, tmp_path
        )
        runs[name] = losses(tmp_path / name)
    for step in range(1, STEPS + 1):
        assert abs(runs["zero2"][step] - runs["single"][step]) <= 1e-5 * abs(runs["single"][step]), (step, runs)


def test_sft_kill9_resumes_exactly(single_sft, sft, tmp_path):
    run_dir = tmp_path / "run"
    overrides = sft_overrides(sft, run_dir)
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
    got, want = losses(run_dir), losses(single_sft)
    for step in range(stopped_at + 1, STEPS + 1):
        assert got[step] == want[step], (step, got[step], want[step])


def test_pipeline_parallel_refuses_loss_masks(sft, tmp_path):
    """Before any process starts (launcher/validation.py). Document masks are refused under pipeline parallel on
    their own: without them, the loss mask is."""
    overrides = sft_overrides(sft, tmp_path / "run", parallel="pp", **{"model.document_mask_eos_id": "null"})
    result = run_train(overrides, tmp_path)
    assert result.returncode != 0
    assert "the shards carry a loss mask" in result.stderr and "parallel.pp=1" in result.stderr, result.stderr[-3000:]
