"""A rerun into an existing output resumes only the same run on the same input, one run at a time, and a failure
anywhere (a full disk at commit, a broken tokenizer) leaves no temporary file and an error naming the task."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from pipeline_testing import output_files

from cluster.ownership import hold_lock
from data_pipeline.cli import build_plan, compose_config, main
from data_pipeline.executors.base import run_task, save_plan_checked
from data_pipeline.fingerprint import InputChanged
from data_pipeline.synthetic import generate_clean_documents

DOCS = generate_clean_documents(40, seed=5)


def write_input(directory: Path) -> dict[str, bytes]:
    directory.mkdir()
    contents = {}
    for f in range(2):
        data = "".join(json.dumps({"id": f"{f}-{i}", "text": t}) + "\n" for i, t in enumerate(DOCS[f::2])).encode()
        (directory / f"part-{f}.jsonl").write_bytes(data)
        contents[f"part-{f}.jsonl"] = data
    return contents


def normalize(source: Path, output: Path) -> int:
    return main(["normalize", f"input={source}", f"output={output}", "tasks=2"])


def test_resume_refuses_changed_input_and_accepts_a_touch(tmp_path, capsys):
    source, output = tmp_path / "in", tmp_path / "out"
    original = write_input(source)
    assert normalize(source, output) == 0
    plan = json.loads((output / "plan.json").read_text())
    assert set(plan["input_files"]) == set(original)
    assert set(plan["input_files"]["part-0.jsonl"]) == {"size", "mtime_ns", "sha256"}

    def refused_with(change: str) -> None:
        capsys.readouterr()
        assert normalize(source, output) == 1
        err = capsys.readouterr().err
        assert change in err and "delete the output directory or choose a new output=" in err, err

    part = source / "part-0.jsonl"
    same_size = original["part-0.jsonl"].replace(b"0-1", b"0-X", 1)
    part.write_bytes(same_size)
    refused_with("part-0.jsonl: content changed")
    part.write_bytes(original["part-0.jsonl"] + b"\n")
    refused_with("part-0.jsonl: size")
    (source / "part-2.jsonl").write_bytes(original["part-0.jsonl"])
    part.write_bytes(original["part-0.jsonl"])
    refused_with("part-2.jsonl: added")
    (source / "part-2.jsonl").unlink()
    part.unlink()
    refused_with("part-0.jsonl: removed")
    part.write_bytes(original["part-0.jsonl"])  # restored: same bytes, a new mtime -> rehashed and accepted
    os.utime(source / "part-1.jsonl", ns=(1, 1))  # touched only
    capsys.readouterr()
    assert normalize(source, output) == 0


def test_task_refuses_a_file_changed_after_the_plan(tmp_path):
    source, output = tmp_path / "in", tmp_path / "out"
    write_input(source)
    plan, _ = build_plan(compose_config(["pipeline=clean", f"input={source}", f"output={output}", "tasks=2"]))
    output.mkdir()
    save_plan_checked(plan)
    with open(source / "part-1.jsonl", "ab") as f:  # e.g. between two stages of a Slurm run
        f.write(json.dumps({"id": "late", "text": DOCS[0]}).encode() + b"\n")
    with pytest.raises(InputChanged, match="part-1.jsonl changed since this run started"):
        run_task(plan, 0, 0, rank=0)


def test_failed_commit_leaves_no_temporary_file_and_the_rerun_completes(tmp_path, monkeypatch, capsys):
    source = tmp_path / "in"
    write_input(source)
    reference = tmp_path / "reference"
    assert normalize(source, reference) == 0
    output = tmp_path / "out"
    (output / "normalize").mkdir(parents=True)
    stale = output / "normalize" / ".shard-00001.jsonl.tmp.99999"  # what a killed run left
    stale.write_text("partial")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("data_pipeline.shards.os.fsync", disk_full)
    assert normalize(source, output) == 1
    err = capsys.readouterr().err
    assert "step normalize, stage run, task 0 of 2" in err and "No space left on device" in err
    assert sorted(p.name for p in output.rglob("*.tmp.*")) == []
    assert not (output / "normalize" / "shard-00000.jsonl").exists()
    monkeypatch.undo()
    assert normalize(source, output) == 0
    assert output_files(output) == output_files(reference)
    assert list(output.rglob("*.tmp.*")) == []


def test_second_run_on_the_same_output_is_refused(tmp_path, capsys):
    source, output = tmp_path / "in", tmp_path / "out"
    write_input(source)
    output.mkdir()
    holder = hold_lock(output, f"output={output}")
    try:
        assert normalize(source, output) == 1
        assert f"in use by another run (host {os.uname().nodename}, pid {os.getpid()}," in capsys.readouterr().err
    finally:
        holder.close()
    assert normalize(source, output) == 0


def test_failing_task_names_its_step_stage_and_task(tmp_path, capsys):
    source = tmp_path / "in"
    write_input(source)
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"version": "1.0", "model": ')
    rc = main(
        ["tokenize", f"input={source}", f"output={tmp_path / 'out'}", "tasks=2", f"+step_params.tokenizer={broken}"]
    )
    assert rc == 1
    assert "error: step tokenize, stage train, task 0 of 2" in capsys.readouterr().err


def test_a_task_removes_only_its_own_stale_temporaries(tmp_path):
    """A task starting (a Slurm retry, or the second worker) clears what an earlier run of *itself* left, while the
    other tasks of the stage may be writing: task 0's part for bucket 1 (hashes-00000-00001) is not task 1's."""
    from data_pipeline.shards import remove_stale_temporaries

    names = {
        ".hashes-00000-00001.npy.tmp.17878": 0,  # task 0 writing its bucket-1 part (boilerplate_dedup)
        ".hashes-00001-00000.npy.tmp.99999": 1,  # task 1's, left by a killed run
        ".shard-00001.jsonl.tmp.12345": 1,
        ".stage-hash-00001.json.tmp.4242": 1,
        ".shard-00010.jsonl.tmp.00001": 10,  # a pid that looks like a rank does not count
        ".shard-00000.jsonl.tmp.100001": 0,
    }
    for name in names:
        (tmp_path / name).write_text("partial")
    remove_stale_temporaries(tmp_path, rank=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, rank in names.items() if rank != 1)
    remove_stale_temporaries(tmp_path)  # the whole-run sweep at start, under the output lock
    assert list(tmp_path.iterdir()) == []
