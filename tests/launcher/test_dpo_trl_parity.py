"""DPO against TRL 1.16's DPOTrainer: the same tiny random Llama as policy (imported through Loom's HF import), another
as reference, the same preference JSONL. TRL tokenises the rows itself; our pipeline must give the same ids, and
our loss, rewards, margins and accuracy of the batch must equal what TRL's compute_loss gives and logs, to 1e-5, for
the sigmoid and ipo losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from preference_fixtures import save_tiny_llama, write_pairs

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")  # the reference implementation (pyproject's dev extra)
datasets = pytest.importorskip("datasets")

PAIRS = 6
TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from data_pipeline.preference import build_preference_shards

    root = tmp_path_factory.mktemp("dpo_parity")
    policy, reference = save_tiny_llama(root / "policy", seed=0), save_tiny_llama(root / "reference", seed=1)
    jsonl = write_pairs(root / "pairs.jsonl", PAIRS, seed=3)
    build_preference_shards([jsonl], root / "shards", policy)
    return {"policy": policy, "reference": reference, "jsonl": jsonl, "shards": root / "shards", "root": root}


def _loom_model(directory: Path) -> torch.nn.Module:
    from model import build
    from model.hf import read_hf_model

    state, cfg = read_hf_model(directory)
    model = build(cfg).eval()
    model.load_state_dict(state)
    return model


def _trl_figures(setup: dict, loss_type: str, beta: float) -> tuple[dict, dict]:
    """TRL's tokenised dataset (ids per row) and its loss and metrics on the whole dataset as one batch."""
    from trl import DPOConfig, DPOTrainer

    tokenizer = transformers.AutoTokenizer.from_pretrained(setup["policy"])
    load = transformers.AutoModelForCausalLM.from_pretrained
    args = DPOConfig(
        output_dir=str(setup["root"] / f"trl_{loss_type}"),
        beta=beta,
        loss_type=[loss_type],
        bf16=False,
        use_cpu=True,
        report_to=[],
        max_length=None,
        per_device_train_batch_size=PAIRS,
    )
    rows = [json.loads(line) for line in setup["jsonl"].read_text().splitlines()]
    trainer = DPOTrainer(
        model=load(setup["policy"], dtype=torch.float32),
        ref_model=load(setup["reference"], dtype=torch.float32),
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    dataset = trainer.train_dataset
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    ids = [(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) for row in dataset]
    return {"loss": loss.item(), **metrics}, {"ids": ids}


def _loom_figures(setup: dict, loss_type: str, beta: float) -> tuple[dict, dict]:
    from data_pipeline.preference_format import PreferenceDataset
    from launcher.dpo import dpo_loss, pack_pairs, sequence_logps, sides

    dataset = PreferenceDataset(setup["shards"])
    pairs = [dataset.pair(i) for i in range(dataset.n_pairs)]
    length = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
    batch = pack_pairs(pairs, length, pad_id=0)
    tokens, targets = sides(batch[:, :-1], batch[:, 1:])
    policy, reference = _loom_model(setup["policy"]), _loom_model(setup["reference"])
    with torch.no_grad():
        result = dpo_loss(
            sequence_logps(policy(tokens), targets),
            sequence_logps(reference(tokens), targets),
            (targets != -100).sum(dim=-1),
            beta=beta,
            loss_type=loss_type,
        )
    figures = {name: value.item() for name, value in result.figures.items()}
    ids = [tuple(list(map(int, part)) for part in pair) for pair in pairs]
    return {"loss": result.loss.item(), **figures}, {"ids": ids}


@pytest.mark.parametrize(("loss_type", "beta"), [("sigmoid", 0.1), ("ipo", 0.5)])
def test_loss_rewards_and_accuracy_equal_trl(setup, loss_type, beta):
    theirs, trl_data = _trl_figures(setup, loss_type, beta)
    ours, our_data = _loom_figures(setup, loss_type, beta)
    assert our_data["ids"] == [tuple(part) for part in trl_data["ids"]]  # the pipeline tokenises as TRL
    pairs = {
        "loss": "loss",
        "dpo/rewards_chosen": "rewards/chosen",
        "dpo/rewards_rejected": "rewards/rejected",
        "dpo/margins": "rewards/margins",
        "dpo/accuracy": "rewards/accuracies",
        "dpo/logps_chosen": "logps/chosen",
        "dpo/logps_rejected": "logps/rejected",
    }
    for name, trl_name in pairs.items():
        assert abs(ours[name] - theirs[trl_name]) <= TOL * max(1.0, abs(theirs[trl_name])), (name, ours, theirs)
    assert 0.0 < theirs["rewards/accuracies"] < 1.0  # a batch where the accuracy can be wrong both ways
    assert abs(theirs["rewards/margins"]) > 1e-3 and theirs["loss"] > 0
