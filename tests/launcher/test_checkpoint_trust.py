"""Checkpoints are untrusted input, tried as an operator would with a real run directory (the 16-step baseline:
checkpoints at steps 12 and 16 kept):
- each corruption of the newest checkpoint makes the resume fall back to the previous one, and every later loss
  equals the uninterrupted run's bitwise; all checkpoints corrupt: a non-zero exit, a clear message, nothing
  overwritten;
- a planted pickle payload (in DCP's .metadata, or as a non-tensor entry) never runs, under resume, init_from or
  `python -m model.hf export`;
- a resume with another model shape, batch, sequence length or data is refused naming the key;
- a run that diverges stops before saving, and its last good checkpoint survives;
- a full disk gives a clear "no space" error, keeps the last good checkpoint, and the next start resumes bitwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from launcher_testing import PYTHON, REPO, child_env, losses, run_train, tiny_overrides

MAX_STEPS = 16


def ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def tensor_file(directory: Path) -> Path:
    return max(directory.glob("*.distcp"), key=lambda p: p.stat().st_size)


def flip_bytes(directory: Path) -> None:
    path = tensor_file(directory)
    data = bytearray(path.read_bytes())
    for offset in (100, len(data) // 2, len(data) - 100):  # same size, three places
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def overwrite_header(directory: Path) -> None:
    path = tensor_file(directory)
    data = path.read_bytes()
    path.write_bytes(b"\x00GARBAGE" * 8 + data[64:])


def zero_fill(directory: Path) -> None:
    path = tensor_file(directory)
    path.write_bytes(bytes(path.stat().st_size))


def delete_file(directory: Path) -> None:
    (directory / "train_state.json").unlink()


def manifest_lists_too_little(directory: Path) -> None:
    marker = json.loads((directory / "COMPLETE").read_text())
    del marker["files"][tensor_file(directory).name]
    (directory / "COMPLETE").write_text(json.dumps(marker))


CORRUPTIONS = {
    "byte_flips": flip_bytes,
    "overwritten_header": overwrite_header,
    "zero_filled": zero_fill,
    "deleted_file": delete_file,
    "manifest_lists_too_little": manifest_lists_too_little,
}


def rehash_manifest(directory: Path) -> None:
    """What an attacker who rewrites a checkpoint also does: a manifest that matches the planted files."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "COMPLETE"):
        files[path.relative_to(directory).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
    marker = json.loads((directory / "COMPLETE").read_text())
    marker["files"] = files
    (directory / "COMPLETE").write_text(json.dumps(marker))


@pytest.fixture(scope="module")
def corrupted_resumes(shards, single_baseline, tmp_path_factory):
    """Each corruption of the newest checkpoint, then the same command relaunched (three at a time)."""
    tmp = tmp_path_factory.mktemp("corrupt")

    def one(name):
        run_dir = tmp / name / "run"
        shutil.copytree(single_baseline, run_dir)
        CORRUPTIONS[name](ckpt(run_dir, 16))
        return name, (run_train(tiny_overrides(shards, run_dir), tmp / name), run_dir)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, CORRUPTIONS))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_and_resumes_bitwise(name, corrupted_resumes, single_baseline):
    result, run_dir = corrupted_resumes[name]
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert f"cannot resume from {ckpt(run_dir, 16)}" in output, output[-4000:]
    assert f"resumed from {ckpt(run_dir, 12)}" in output
    want, got = losses(single_baseline), losses(run_dir)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    for step in range(13, MAX_STEPS + 1):
        assert got[step] == want[step], f"step {step}: {got[step]!r} != {want[step]!r}"
    assert (ckpt(run_dir, 16) / "COMPLETE").exists()  # saved again, whole


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run_dir).as_posix(): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name not in (".lock", "train_rank0.log")
    }


def test_all_checkpoints_corrupt_stops_and_overwrites_nothing(shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single_baseline, run_dir)
    flip_bytes(ckpt(run_dir, 16))
    zero_fill(ckpt(run_dir, 12))
    before = snapshot(run_dir)
    result = run_train(tiny_overrides(shards, run_dir, max_steps=20), tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no checkpoint in" in result.stderr and "can be resumed, so nothing was changed" in result.stderr
    assert "step_00000012" in result.stderr and "step_00000016" in result.stderr
    assert "trainer.resume=never" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------- no pickle
class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_metadata_payload(directory: Path, marker: Path) -> None:
    (directory / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    rehash_manifest(directory)


def plant_non_tensor_entry(directory: Path, marker: Path) -> None:
    """The same checkpoint, every tensor kept, but the embedding weight a pickled object in DCP (a
    BytesStorageMetadata entry), with a manifest to match."""
    import torch
    import torch.distributed.checkpoint as dcp

    from model.checkpoint_io import TensorStorageMetadata, load_tensors, read_dcp_metadata

    state: dict = {}
    for key, meta in read_dcp_metadata(directory).state_dict_metadata.items():
        if isinstance(meta, TensorStorageMetadata):
            top, rest = key.split(".", 1)
            state.setdefault(top, {})[rest] = torch.empty(meta.size, dtype=meta.properties.dtype)
    load_tensors(state, directory, no_dist=True)
    state["model"]["tok_embeddings.weight"] = Payload(marker)
    for name in (".metadata", *[p.name for p in directory.glob("*.distcp")]):
        (directory / name).unlink()
    dcp.save(state, checkpoint_id=str(directory), no_dist=True)
    rehash_manifest(directory)


PLANTS = {"metadata": plant_metadata_payload, "non_tensor_entry": plant_non_tensor_entry}


@pytest.mark.parametrize("plant", list(PLANTS))
def test_planted_pickle_never_runs(plant, shards, single_baseline, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    run_dir = tmp_path / "run"
    shutil.copytree(single_baseline, run_dir)
    for step in (12, 16):
        PLANTS[plant](ckpt(run_dir, step), marker)
    with pytest.raises(AssertionError):  # the payload does run when unpickled plainly: the test can fail
        probe = tmp_path / "probe"
        pickle.loads(pickle.dumps(Payload(probe)))
        assert not probe.exists()

    resumed = run_train(tiny_overrides(shards, run_dir, max_steps=20), tmp_path)
    assert resumed.returncode == 1 and "can be resumed" in resumed.stderr, resumed.stderr[-3000:]
    init = run_train(
        tiny_overrides(shards, tmp_path / "fresh", max_steps=2) + [f"trainer.init_from={run_dir}"], tmp_path
    )
    assert init.returncode != 0
    export = subprocess.run(
        [PYTHON, "-m", "model.hf", "export", str(run_dir), str(tmp_path / "hf")],
        cwd=REPO,
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode != 0
    for result in (resumed, init, export):
        assert "Traceback" not in result.stderr or "CheckpointError" in result.stderr, result.stderr[-3000:]
    assert not marker.exists(), "a pickle payload from the checkpoint ran"


# ---------------------------------------------------------------------------------------------- drift
DRIFTS = [
    ("fewer_layers", ["model.n_layers=1"], "model.n_layers"),
    ("other_dim", ["model.dim=48", "model.n_heads=2"], "model.dim"),
    ("other_vocab", ["model.vocab_size=300"], "model.vocab_size"),
    ("other_global_batch", ["trainer.global_batch_size=16"], "trainer.global_batch_size"),
    ("other_seq_len", ["data.seq_len=16"], "data.seq_len"),
]


@pytest.mark.parametrize("overrides, key", [d[1:] for d in DRIFTS], ids=[d[0] for d in DRIFTS])
def test_resume_with_another_run_is_refused_naming_the_key(overrides, key, shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single_baseline, run_dir)
    result = run_train(tiny_overrides(shards, run_dir, max_steps=20) + overrides, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert key in result.stderr and "trainer.resume_allow=[" in result.stderr
    assert losses(run_dir) == losses(single_baseline)


def test_checkpoint_config_is_compared_even_without_the_run_dirs_config(shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single_baseline, run_dir)
    (run_dir / "config.yaml").unlink()
    result = run_train(tiny_overrides(shards, run_dir, max_steps=20) + ["model.n_layers=1"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "model.n_layers: 2 -> 1" in result.stderr and "trainer.resume_allow=[model.n_layers]" in result.stderr


def test_other_data_of_the_same_size_is_refused(shards, single_baseline, tmp_path):
    """Same shard names and sizes, other tokens: only the content hashes in the headers tell them apart."""
    import numpy as np

    from data_pipeline.formats import PackedShard, ShardWriter

    other = tmp_path / "other_shards"
    rng = np.random.default_rng(99)
    for header in sorted(shards.glob("*.json")):
        shard = PackedShard.open(header)
        stem = header.name[: -len(".json")]
        tokenizer_id = shard.header["tokenizer"]["id"]
        with ShardWriter(other, stem, vocab_size=256, eos_id=0, tokenizer_id=tokenizer_id) as writer:
            for i, n in enumerate(np.diff(shard.offsets.astype(np.int64))):
                source = shard.source_names[shard.source_ids[i]] if shard.source_ids is not None else None
                writer.add_document(rng.integers(1, 256, size=int(n)), source)
    assert [p.stat().st_size for p in sorted(other.iterdir())] == [p.stat().st_size for p in sorted(shards.iterdir())]
    run_dir = tmp_path / "run"
    shutil.copytree(single_baseline, run_dir)
    result = run_train(tiny_overrides(other, run_dir, max_steps=20), tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "data.fingerprint (the data's content)" in result.stderr
    assert "trainer.resume_allow=[data.fingerprint]" in result.stderr


# ---------------------------------------------------------------------------------------------- NaN
def test_diverging_run_stops_before_saving_and_keeps_the_good_checkpoint(shards, single_baseline, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(single_baseline, run_dir)
    shutil.rmtree(ckpt(run_dir, 16))
    result = run_train(tiny_overrides(shards, run_dir) + ["optim.lr=1e30", "trainer.resume_allow=[optim.lr]"], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "became NaN or infinite" in result.stderr and "last good checkpoint: step 12" in result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000012"]
    from model.checkpoint_io import verify_checkpoint

    verify_checkpoint(ckpt(run_dir, 12))
    logged = losses(run_dir)
    assert all(v == v and abs(v) != float("inf") for v in logged.values()), logged  # no NaN was logged


# ---------------------------------------------------------------------------------------------- disk full
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 40 MiB tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_gives_a_clear_error_keeps_the_last_checkpoint_and_resumes(shards, tmp_path, small_disk):
    # ~1.2M parameters: a checkpoint (weights and two Adam moments) is ~14 MiB, so the 40 MiB disk takes two
    # checkpoints (kept: 2) but not the third beside them.
    model = ["model.dim=128", "model.n_layers=6", "model.n_heads=4", "model.n_kv_heads=2"]
    run_dir = small_disk / "run"
    full = run_train(tiny_overrides(shards, run_dir, max_steps=12) + model, tmp_path)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "no space:" in full.stderr and str(small_disk) in full.stderr, full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert kept and not list((run_dir / "checkpoints").glob(".tmp-*")), kept
    from model.checkpoint_io import verify_checkpoint

    verify_checkpoint(run_dir / "checkpoints" / kept[-1])

    moved = tmp_path / "run"  # the next start, with space: the same run moved to a bigger disk
    shutil.copytree(run_dir, moved)
    resumed = run_train(tiny_overrides(shards, moved, max_steps=12) + model, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_train(tiny_overrides(shards, tmp_path / "reference", max_steps=12) + model, tmp_path)
    assert reference.returncode == 0
    assert losses(moved) == losses(tmp_path / "reference")
