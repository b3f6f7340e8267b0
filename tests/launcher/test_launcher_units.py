"""In-process checks of the launcher's pieces: schedules, the data order, parameter groups, checkpoint layout."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_pipeline.formats import PackedDataset
from launcher.data import DataError, SyntheticBatches, TokenBatches
from launcher.optim import parameter_groups
from launcher.schedule import lr_multiplier
from model.checkpoint_io import (
    CheckpointError,
    find_complete_checkpoints,
    load_model_checkpoint,
    read_model_config,
    save_model_checkpoint,
    step_dir_name,
    verify_checkpoint,
)
from model.config import ModelConfig


def schedule(name, warmup=10, floor=0.1, decay_fraction=0.2, shape="linear"):
    return SimpleNamespace(
        name=name, warmup_steps=warmup, min_lr_ratio=floor, decay_fraction=decay_fraction, decay_shape=shape
    )


def test_cosine_warms_up_linearly_then_decays_to_the_floor():
    f = lr_multiplier(schedule("cosine"), max_steps=100)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))


@pytest.mark.parametrize("shape, midpoint", [("linear", 0.5), ("cosine", 0.5), ("sqrt", 1 - math.sqrt(0.5))])
def test_wsd_is_flat_then_anneals_over_the_decay_phase(shape, midpoint):
    f = lr_multiplier(schedule("wsd", floor=0.0, decay_fraction=0.2, shape=shape), max_steps=100)
    assert f(10) == f(50) == f(79) == 1.0  # stable phase
    assert f(80) == pytest.approx(1.0)  # decay starts at 100 - 20
    assert f(90) == pytest.approx(midpoint)
    assert f(100) == pytest.approx(0.0)


def test_constant_after_warmup():
    f = lr_multiplier(schedule("constant", warmup=4), max_steps=50)
    assert f(0) == pytest.approx(0.25) and f(3) == 1.0 and f(49) == 1.0


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = torch.nn.ModuleDict(
        {
            "emb": torch.nn.Embedding(10, 4),
            "lin": torch.nn.Linear(4, 4),
            "norm": torch.nn.LayerNorm(4),
        }
    )
    cfg = SimpleNamespace(weight_decay=0.1, decay_norms_and_biases=False, decay_embeddings=False)
    decay, no_decay = parameter_groups(model, cfg)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model["lin"].weight)}
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias
    cfg.decay_embeddings = True
    decay, _ = parameter_groups(model, cfg)
    assert id(model["emb"].weight) in {id(p) for p in decay["params"]}


def loader(shards, rank=0, degree=1, seed=0, batch=8):
    return TokenBatches(
        PackedDataset(shards),
        seq_len=32,
        global_batch=batch,
        dp_rank=rank,
        dp_degree=degree,
        seed=seed,
        val_fraction=0.05,
    )


def test_batches_are_deterministic_and_ranks_split_the_global_batch(shards):
    a, b = loader(shards), loader(shards)
    first = [a.next_batch() for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, [b.next_batch() for _ in range(3)]))
    assert first[0].shape == (8, 33)
    assert not torch.equal(loader(shards, seed=1).next_batch(), first[0])
    r0, r1 = loader(shards, 0, 2), loader(shards, 1, 2)
    for single in first:
        assert torch.equal(torch.cat([r0.next_batch(), r1.next_batch()]), single)


@pytest.fixture
def counting_shards(tmp_path):
    """Tokens 0, 1, 2, ... so a window's first token names it."""
    from data_pipeline.formats import ShardWriter

    with ShardWriter(tmp_path, "count", vocab_size=2**16, eos_id=None, tokenizer_id="count") as writer:
        writer.add_document(np.arange(20_000))
    return tmp_path


def test_position_restores_mid_epoch_and_each_epoch_reshuffles(shards, counting_shards):
    a = loader(shards)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    b = loader(shards, rank=1, degree=2)  # another layout resumes the same global position
    b.load_state_dict(state)
    assert torch.equal(b.next_batch(), a.next_batch()[4:])
    c = loader(counting_shards)
    read = []  # (position in the sample stream, window) of every row, in order
    while c.samples < 2 * c.n_windows:
        rows = c.next_batch()
        assert torch.equal(rows[:, 0], torch.from_numpy(c.last_read[1] * 32))  # the rows are the windows named
        read += zip(*(part.tolist() for part in c.last_read))
    assert [position for position, _ in read] == list(range(len(read)))  # one stream, nothing skipped
    epochs = [[w for p, w in read if p // c.n_windows == e] for e in (0, 1)]
    for windows in epochs:  # every window exactly once per epoch (the last batch runs on into the next epoch)
        assert sorted(windows) == list(range(c.n_windows))
    assert epochs[0] != epochs[1]
    assert c.epoch == 2


def test_resuming_with_other_data_is_refused(shards):
    state = loader(shards).state_dict()
    other = TokenBatches(
        PackedDataset(shards), seq_len=16, global_batch=8, dp_rank=0, dp_degree=1, seed=0, val_fraction=0.05
    )
    with pytest.raises(DataError, match="seq_len"):
        other.load_state_dict(state)


def test_eval_batches_are_held_out_and_split_across_ranks(counting_shards):
    shards = counting_shards
    a = loader(shards)
    single = torch.cat(a.eval_batches(8, micro_batch=3))
    assert single.shape == (8, 33)
    split = torch.cat(loader(shards, 0, 2).eval_batches(8, 2) + loader(shards, 1, 2).eval_batches(8, 2))
    assert torch.equal(split, single)
    assert single[:, 0].min().item() >= a.train_tokens  # held out: after every training token
    train_max = torch.cat([a.next_batch() for _ in range(a.n_windows // 8 + 1)]).max().item()
    assert train_max < a.train_tokens


def test_too_little_data_for_one_batch_is_a_clear_error(shards):
    with pytest.raises(DataError, match="fewer than one global batch"):
        loader(shards, batch=100_000)


# ---------------------------------------------------------------------------------------- checkpoint layout
def small_state():
    torch.manual_seed(0)
    return {"tok_embeddings.weight": torch.randn(16, 8), "layers.0.attention.wq.weight": torch.randn(8, 8)}


def test_synthetic_batches_split_ranks_resume_and_hold_out():
    def batches(dp_rank=0, dp_degree=1, seed=5):
        return SyntheticBatches(
            vocab_size=300, seq_len=16, global_batch=4, dp_rank=dp_rank, dp_degree=dp_degree, seed=seed
        )

    one = batches()
    steps = [one.next_batch() for _ in range(3)]
    assert steps[0].shape == (4, 17) and steps[0].dtype == torch.int64
    assert 0 <= int(torch.cat(steps).min()) and int(torch.cat(steps).max()) < 300
    assert not torch.equal(steps[0], steps[1])  # a fresh batch every step
    ranks = [batches(r, 2) for r in range(2)]
    assert torch.equal(torch.cat([r.next_batch() for r in ranks]), steps[0])  # the same global batch on 2 ranks
    resumed = batches()
    resumed.load_state_dict(one.state_dict())
    assert torch.equal(resumed.next_batch(), one.next_batch())
    with pytest.raises(DataError, match="seed=5 but this run has 6"):
        batches(seed=6).load_state_dict(one.state_dict())
    held_out = torch.cat(batches().eval_batches(4, 2))
    assert held_out.shape == (4, 17) and not any(torch.equal(held_out, s) for s in steps)
    assert torch.equal(torch.cat(batches(1, 2).eval_batches(4, 2)), held_out[2:])


def test_model_checkpoint_round_trip_and_run_dir_lookup(tmp_path):
    cfg = ModelConfig(vocab_size=16, dim=8, n_heads=2, n_layers=1)
    for step in (1, 2):
        save_model_checkpoint(small_state(), cfg, tmp_path / "checkpoints" / step_dir_name(step), step=step)
    newest = tmp_path / "checkpoints" / "step_00000002"
    marker = json.loads((newest / "COMPLETE").read_text())
    assert marker["step"] == 2 and ".metadata" in marker["files"] and "model_config.json" in marker["files"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    state, loaded_cfg = load_model_checkpoint(tmp_path)
    assert loaded_cfg == cfg and read_model_config(newest) == cfg
    assert all(torch.equal(state[k], v) for k, v in small_state().items())
    with pytest.raises(CheckpointError, match="already"):
        save_model_checkpoint(small_state(), cfg, newest)


def _rehashed(directory, damage):
    """Damage, then rewrite the manifest to match (what someone who tampers with a checkpoint would do)."""
    from model.checkpoint_io import COMPLETE_MARKER, checkpoint_files, describe_files

    damage(directory)
    marker = json.loads((directory / COMPLETE_MARKER).read_text())
    marker["files"] = describe_files(directory, checkpoint_files(directory))
    (directory / COMPLETE_MARKER).write_text(json.dumps(marker))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "COMPLETE").unlink(), "no COMPLETE marker"),
        (lambda d: (d / "model_config.json").write_text("{}"), "COMPLETE says"),
        (lambda d: next(d.glob("*.distcp")).unlink(), "are missing"),
        (
            lambda d: (d / ".metadata").write_bytes(b"x" * (d / ".metadata").stat().st_size),
            "does not match its SHA-256",
        ),
        (lambda d: (d / "extra.bin").write_bytes(b"x"), "not listed"),
        (lambda d: _rehashed(d, lambda d: (d / ".metadata").write_bytes(b"x" * 10)), "unreadable DCP metadata"),
    ],
    ids=["no_marker", "size", "missing", "checksum", "unlisted", "tampered_metadata"],
)
def test_torn_or_corrupt_checkpoints_are_skipped_with_the_reason(damage, reason, tmp_path, caplog):
    cfg = ModelConfig(vocab_size=16, dim=8, n_heads=2, n_layers=1)
    for step in (1, 2):
        save_model_checkpoint(small_state(), cfg, tmp_path / "checkpoints" / step_dir_name(step), step=step)
    newest = tmp_path / "checkpoints" / "step_00000002"
    damage(newest)
    with pytest.raises(CheckpointError, match=reason):
        verify_checkpoint(newest)
    with caplog.at_level("WARNING"):
        assert find_complete_checkpoints(tmp_path) == [tmp_path / "checkpoints" / "step_00000001"]
    assert str(newest) in caplog.text and reason in caplog.text


def test_speed_meter_leaves_paused_time_out_of_tokens_per_sec():
    """Evaluation, sampling and checkpoint saves run inside `paused()`: their time must not lower tokens/s."""
    import time

    from launcher.metrics import SpeedMeter

    speed = SpeedMeter(flops_per_token=1.0, peak_flops_per_device=None, world_size=1, device_type="cpu")
    speed.reset()
    time.sleep(0.2)
    speed.add_tokens(1000)
    with speed.paused():
        time.sleep(1.0)  # a checkpoint save
    measured = speed.measure()["tokens_per_sec"]
    assert 1000 / 0.6 < measured <= 1000 / 0.2, measured  # 5,000 tokens/s, not 833 with the save counted


def test_changed_keys_names_what_makes_another_run():
    from launcher.run_dir import changed_keys

    saved = {
        "model": {"dim": 32, "n_layers": 2},
        "data": {"seq_len": 32, "path": "/a"},
        "optim": {"lr": 3e-3},
        "trainer": {"max_steps": 16},
        "parallel": {"tp": 1},
    }
    new = {
        "model": {"dim": 32, "n_layers": 1},
        "data": {"seq_len": 64, "path": "/b"},
        "optim": {"lr": 1e-2},
        "trainer": {"max_steps": 32},
        "parallel": {"tp": 2},
    }
    # operational keys (data.path, trainer.max_steps, the layout) may change; the rest is another run
    assert changed_keys(saved, new, []) == [
        "data.seq_len: 32 -> 64",
        "model.n_layers: 2 -> 1",
        "optim.lr: 0.003 -> 0.01",
    ]
    assert changed_keys(saved, new, ["optim.lr", "model"]) == ["data.seq_len: 32 -> 64"]
    # "data.fingerprint" allowed does not allow data.seq_len (entries cover themselves and what is under them)
    assert changed_keys(saved, new, ["data.fingerprint"])[0] == "data.seq_len: 32 -> 64"
    # a key one side lacks (another Loom version) is a change only if it is not this version's default
    assert (
        changed_keys(
            {**saved, "model": {"dim": 32, "n_layers": 2}},
            {**saved, "model": {"dim": 32, "n_layers": 2, "qkv_bias": False}},
            [],
        )
        == []
    )
    assert changed_keys(saved, {**saved, "model": {"dim": 32, "n_layers": 2, "qkv_bias": True}}, []) == [
        "model.qkv_bias: '<absent>' -> True"
    ]
