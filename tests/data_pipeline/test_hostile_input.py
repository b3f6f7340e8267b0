"""The default pipeline on an input written to break it (tests/data_pipeline/hostile_input.py): it completes, every
input line of every file is accounted for exactly once (kept, excluded with a reason, or quarantined with file,
1-based line and reason); a kill -9 of the main process takes its workers with it, and the rerun gives the same
bytes as an uninterrupted run; a changed input is refused on resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hostile_input import DOCUMENT, GZ, MIXED, write_hostile_input

from data_pipeline.shards import read_records, read_shard

REPO = Path(__file__).resolve().parents[2]
# Steps of configs/pipeline/default.yaml that run here (decontaminate is skipped: no eval sets); tokenize writes
# token shards, so the documents it keeps are those of the last document step.
# The steps that keep or exclude documents in pipeline=default without eval sets; the last writes the documents kept
DOCUMENT_STEPS = ["normalize", "exact_dedup", "minhash_dedup", "boilerplate_dedup", "heuristics", "pii"]


def pipeline_command(source: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "data_pipeline",
        "run",
        "pipeline=default",
        f"input={source}",
        f"output={output}",
        "tasks=4",
        "workers=2",
        "report=false",
    ]


def run_pipeline(source: Path, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        pipeline_command(source, output),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return write_hostile_input(tmp_path_factory.mktemp("hostile") / "input")


@pytest.fixture(scope="module")
def reference_run(hostile, tmp_path_factory):
    output = tmp_path_factory.mktemp("hostile_run") / "out"
    result = run_pipeline(hostile.directory, output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def data_files(root: Path) -> dict[str, bytes]:
    """Every file a run publishes as data (documents, exclusions, quarantine, token shards, tokenizer)."""
    skip = {".markers", ".work", "stats"}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip and p.name not in ("plan.json", ".lock")
    }


def test_default_pipeline_accounts_for_every_input_line(hostile, reference_run):
    output = reference_run
    outcome: dict[tuple[str, int], str] = {}  # (file, line) -> what happened to it; each line exactly once

    def record(place: tuple[str, int], what: str) -> None:
        assert place not in outcome, f"{place} accounted twice: {outcome[place]} and {what}"
        outcome[place] = what

    for path in sorted((output / "quarantine").rglob("*.jsonl")):
        if path.parent.name != "normalize":  # only the step reading the raw input quarantines
            assert path.read_bytes() == b"", path
        for line in path.read_text(encoding="utf-8").splitlines():
            q = json.loads(line)
            assert q["source"] in (MIXED, GZ) and isinstance(q["line"], int) and q["line"] >= 1 and q["reason"]
            record((q["source"], q["line"]), "quarantined:" + q["reason"])
            if q["reason"] == "compressed_stream_truncated":
                assert q["byte_offset"] == hostile.gz_truncated_at
    for step in DOCUMENT_STEPS:
        for path in sorted((output / "excluded" / step).glob("*.jsonl.zst")):
            for excluded in read_records(path):
                assert excluded["excluded_reason"]
                record(hostile.line_of(excluded["id"]), f"excluded:{step}")
    kept = [doc for path in sorted((output / DOCUMENT_STEPS[-1]).glob("shard-*")) for doc in read_shard(path)]
    for doc in kept:
        record(hostile.line_of(doc.id), "kept")

    for name, expected in hostile.expected.items():
        got = {line: what for (source, line), what in outcome.items() if source == name}
        assert sorted(got) == list(range(1, len(expected) + 1)), f"{name}: lines missing or invented"
        for line, want in expected.items():
            if want == DOCUMENT:
                assert not got[line].startswith("quarantined"), f"{name}:{line} is a valid document: {got[line]}"
            else:
                assert got[line].startswith("quarantined:" + want), f"{name}:{line}: want {want}, got {got[line]}"
    assert outcome[(MIXED, 1)] in ("kept", *(f"excluded:{s}" for s in DOCUMENT_STEPS))  # BOM line: a document
    assert sum(1 for p in outcome if p[0] == MIXED and p[1] in hostile.expected[MIXED]) == 10_000

    # The per-step stats say the same: kept + excluded + quarantined = input, and the tokenizer got the survivors.
    stats = {s: json.loads((output / "stats" / f"{s}.json").read_text()) for s in DOCUMENT_STEPS + ["tokenize"]}
    assert stats["normalize"]["docs_in"] == sum(len(e) for e in hostile.expected.values())
    for s in stats.values():
        assert s["docs_kept"] + s["docs_excluded"] + s["docs_quarantined"] == s["docs_in"]
    assert stats["tokenize"]["docs_in"] == stats["tokenize"]["docs_kept"] == len(kept) > 5000
    reasons = Counter(w.split(":")[1] for w in outcome.values() if w.startswith("quarantined"))
    assert stats["normalize"]["counters"]["quarantined.lone_surrogate"] == reasons["lone_surrogate"] == 48


def live_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: works for processes this test did not start directly)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's reaping is left


def test_kill_main_process_stops_workers_and_rerun_is_identical(hostile, reference_run, tmp_path):
    source = tmp_path / "input"
    shutil.copytree(hostile.directory, source, copy_function=shutil.copy2)  # same names, sizes and mtimes
    output = tmp_path / "out"
    process = subprocess.Popen(
        pipeline_command(source, output),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Kill the main process alone (its workers get no signal from us) once some, not all, of the heuristics
        # step's tasks have finished.
        markers = output / ".markers" / "heuristics" / "run"
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not (markers.is_dir() and any(markers.iterdir())):
            time.sleep(0.005)
        workers = live_children(process.pid)
        assert process.poll() is None, "the run finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert len(workers) >= 2, f"expected the pool's workers, found {workers}"
        assert len(list(markers.iterdir())) < 4, "killed after the step finished, not mid-step"
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.05)
        assert [pid for pid in workers if alive(pid)] == [], "pool workers outlived the main process by 10 s"
    finally:
        try:  # our own session only (workers keep its group id): leave nothing behind if the test fails
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    rerun = run_pipeline(source, output)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "heuristics/run: 4 of 4" not in rerun.stderr  # finished tasks were skipped, the rest redone
    reference, resumed = data_files(reference_run), data_files(output)
    assert len(reference) > 20 and reference.keys() == resumed.keys()
    assert [k for k in reference if reference[k] != resumed[k]] == []
    assert list(output.rglob("*.tmp.*")) == []

    # A resume on a changed input is refused, naming the file and what changed (same size: the hash sees it).
    mixed = source / MIXED
    data = bytearray(mixed.read_bytes())
    position = data.index(b"the", 5000)
    data[position : position + 3] = b"THE"
    mixed.write_bytes(bytes(data))
    refused = run_pipeline(source, output)
    assert refused.returncode == 1
    assert f"{MIXED}: content changed" in refused.stderr and "delete the output directory" in refused.stderr
