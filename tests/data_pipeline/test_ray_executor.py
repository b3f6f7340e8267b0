"""The data pipeline on a real Ray cluster of two nodes (a head and a worker, each its own raylet, object store and
worker processes, started here on this machine with one CPU each), run the way a user does: `python -m
data_pipeline run ... executor=ray ray_address=...`. Both nodes see the output directory (the machine's
filesystem), as the Ray executor requires.

- The default pipeline's output on Ray equals the local executor's, file for file and byte for byte (timing stats,
  completion markers and the plan's output path aside), and tasks ran on both nodes.
- A task whose worker is killed mid-task (SIGKILL after it wrote its output under temporary names, before it
  renamed any into place) is rerun by Ray, and the output is still identical, with no temporary left behind.
- With no retries left (ray_max_retries=0) the killed task fails the run, naming it, with its output still under
  temporary names and no marker; the same command run again resumes and gives the same output.
- A task that raises (once, so a retry would succeed) is not retried: the run fails naming the step, stage and
  task. A bad executor or ray_max_retries is refused before anything is written.

The kill and the error come from data_pipeline.executors.ray's test hook (LOOM_RAY_TEST_FAULT_ONCE), the
counterpart of the stand-in interpreter the Slurm tests fail tasks with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from data_pipeline.cli import build_plan, compose_config, main
from data_pipeline.executors.local import LocalExecutor
from data_pipeline.executors.ray import FAULT_ONCE_ENV
from data_pipeline.synthetic import generate_corpus, write_corpus

REPO = Path(__file__).resolve().parents[2]
# Ray 2.60 turns token authentication on for a cluster when ~/.ray/auth_token exists (a local ray.init() writes
# one): the nodes and drivers started here leave it off, whatever that file holds.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # per node; Ray's minimum is 75 MiB and the plan is all that is stored
# The task faults are planted in: a per-shard output stage mid-pipeline, the head of the streaming group
# boilerplate_dedup -> pii -> decontaminate (data_pipeline/executors/streams.py): its task runs all three
FAULTY = ("boilerplate_dedup", "run", "1")
VOLATILE_STATS = {"time_s", "cpu_s", "wall_s", "stage_time_s", "started", "finished"}  # data_pipeline/stats.py
TASK_LINE = re.compile(r"step (\w+), stage (\w+), task (\d+) of \d+ ran on node (\w+) \(pid (\d+)\)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_node(temp: Path, name: str, role: list[str]) -> subprocess.Popen:
    """`ray start --block` for one node: its raylet, object store and agents are its children and die with it
    (Ray's fate sharing), so ending this process ends the node. Returns once the node has started."""
    log = (temp / f"{name}.log").open("w")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            *role,
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--temp-dir={temp}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **RAY_ENV},
    )
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in (temp / f"{name}.log").read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_node(process)
            raise RuntimeError(f"ray start ({name}) failed:\n{(temp / f'{name}.log').read_text()[-3000:]}")
        time.sleep(0.2)
    return process


def _stop_node(process: subprocess.Popen) -> None:
    """End one node started here: SIGTERM to its `ray start` (which stops its processes), then SIGKILL to its
    process group if anything is left. Never `ray stop`, which would end every Ray on the machine."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of two Ray nodes started here, each its own raylet; only those processes are ended after."""
    temp = Path(tempfile.mkdtemp(prefix="loomray-", dir="/tmp"))  # short: Ray's socket paths live under it
    address = f"127.0.0.1:{_free_port()}"
    nodes = []
    try:
        nodes.append(
            _start_node(temp, "head", ["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"])
        )
        nodes.append(_start_node(temp, "worker", [f"--address={address}"]))
        yield address
    finally:
        for process in reversed(nodes):
            _stop_node(process)
        for _ in range(20):  # a worker of a stopped raylet may still write its last log lines for a moment
            shutil.rmtree(temp, ignore_errors=True)
            time.sleep(0.5)
            if not temp.exists():
                break


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_corpus")
    paths = write_corpus(
        generate_corpus(n_clean=60, n_exact_dups=5, n_near_dups=8, n_junk=8, n_contaminated=4, seed=11),
        root / "raw",
        files=2,
    )
    return paths


def _overrides(corpus, output: Path) -> list[str]:
    return ["pipeline=default", f"input={corpus['corpus']}", f"output={output}", f"eval_sets=[{corpus['eval']}]"]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("ray_reference") / "local"
    plan, _ = build_plan(compose_config([*_overrides(corpus, output), "tasks=2"]))
    LocalExecutor(plan, workers=1).run()
    return output


def run_on_ray(
    cluster: str, command: str, overrides: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m data_pipeline COMMAND ... executor=ray` against the test cluster, two tasks in flight."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "data_pipeline",
            command,
            *overrides,
            "tasks=2",
            "workers=2",
            "report=false",
            "executor=ray",
            f"ray_address={cluster}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), **RAY_ENV, **(env or {})},
    )


def _without(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def run_files(root: Path) -> dict[str, object]:
    """Every file of a run: bytes, except the stats and the plan, compared without what differs between two runs
    of the same plan (times; the output path). Completion markers (a finish time) and the lock only exist."""
    files: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if name.startswith(".markers/") or name == ".lock":
            files[name] = "exists"
        elif name.startswith("stats/"):
            files[name] = _without(json.loads(path.read_text()), VOLATILE_STATS)
        elif name == "plan.json":
            files[name] = _without(json.loads(path.read_text()), {"output"})
        else:
            files[name] = path.read_bytes()
    return files


def _tasks_ran(stderr: str) -> list[tuple[str, str, int, str, int]]:
    return [(s, st, int(r), node, int(pid)) for s, st, r, node, pid in TASK_LINE.findall(stderr)]


@pytest.fixture(scope="module")
def killed_run(ray_cluster, corpus, reference, tmp_path_factory):
    """One run on Ray in which the worker of boilerplate_dedup/run task 1 (and its group) is killed mid-task once."""
    work = tmp_path_factory.mktemp("ray_killed")
    trigger = work / "kill"
    trigger.write_text(" ".join([*FAULTY, "kill"]))
    output = work / "out"
    result = run_on_ray(ray_cluster, "run", _overrides(corpus, output), env={FAULT_ONCE_ENV: str(trigger)})
    return output, trigger, result


def test_two_node_ray_output_equals_local_and_survives_a_killed_worker(ray_cluster, reference, killed_run):
    output, trigger, result = killed_run
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    assert run_files(output) == run_files(reference)
    unfinished = [p for p in output.rglob("*") if ".tmp." in p.name or p.name.endswith(".partial")]
    assert not unfinished  # the killed attempt's unfinished files are gone

    ran = _tasks_ran(result.stderr)
    assert len({node for *_, node, _ in ran}) == 2, result.stderr[-5000:]  # tasks ran on both nodes (all there are)

    assert not trigger.exists()  # the task claimed the trigger: its first attempt was killed
    killed = json.loads(Path(f"{trigger}.claimed").read_text())
    retried = [pid for step, stage, rank, _, pid in ran if (step, stage, str(rank)) == FAULTY]
    assert len(retried) == 1 and retried[0] != killed["pid"], (killed, ran)  # rerun once, in another worker


def test_a_task_that_raises_is_not_retried_and_fails_the_run_naming_it(ray_cluster, corpus, tmp_path):
    """The planted error fires on the first attempt only, so a retry would succeed: the run failing shows there
    was none (ray_max_retries=3 is for dead workers, not for the task's own errors)."""
    trigger = tmp_path / "raise"
    trigger.write_text(" ".join([*FAULTY, "raise"]))
    result = run_on_ray(ray_cluster, "run", _overrides(corpus, tmp_path / "out"), env={FAULT_ONCE_ENV: str(trigger)})
    assert result.returncode == 1, result.stdout + result.stderr[-5000:]
    message = result.stderr.strip().splitlines()[-1]
    group = r"boilerplate_dedup\+pii\+decontaminate"
    assert re.match(rf"error: step {group}, stage run, task 1 of 2(, after reading .+)?: PlantedFault: ", message)
    assert Path(f"{trigger}.claimed").exists()
    for step in ("boilerplate_dedup", "pii", "decontaminate"):
        assert not (tmp_path / "out" / ".markers" / step / "run" / "task-00001").exists()
    assert not (tmp_path / "out" / ".markers" / "tokenize").exists()  # the run stopped at the failed stage


def test_a_worker_killed_with_no_retries_left_fails_the_run_and_a_rerun_resumes(
    ray_cluster, corpus, reference, tmp_path
):
    trigger = tmp_path / "kill"
    trigger.write_text(" ".join([*FAULTY, "kill"]))
    output = tmp_path / "out"
    overrides = _overrides(corpus, output)
    result = run_on_ray(ray_cluster, "run", [*overrides, "ray_max_retries=0"], env={FAULT_ONCE_ENV: str(trigger)})
    assert result.returncode == 1, result.stdout + result.stderr[-5000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "step boilerplate_dedup, stage run, task 1 of 2: its Ray worker died on each of 1 attempt(s)" in message
    # killed mid-task: its output written under unfinished names (a resumable task's `.partial` files), nothing
    # published, no marker
    excluded = output / "excluded" / "boilerplate_dedup"
    assert [p.name for p in excluded.glob(".*.partial")] == [".shard-00001.jsonl.zst.partial"]
    assert not (excluded / "shard-00001.jsonl.zst").exists()
    assert not (output / ".markers" / "boilerplate_dedup" / "run" / "task-00001").exists()

    rerun = run_on_ray(ray_cluster, "run", overrides)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-5000:]
    assert run_files(output) == run_files(reference)
    assert not [p for p in output.rglob("*") if ".tmp." in p.name or p.name.endswith(".partial")]
    rerun_tasks = {(step, stage, rank) for step, stage, rank, *_ in _tasks_ran(rerun.stderr)}
    assert ("normalize", "run", 0) not in rerun_tasks and FAULTY[:2] + (1,) in rerun_tasks  # resumed


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("executor=spark", "error: executor='spark': use one of local, slurm, ray"),
        ("ray_max_retries=-1", "error: ray_max_retries=-1: must be >= 0"),
    ],
)
def test_bad_ray_settings_fail_naming_the_key(tmp_path, capsys, override, expected):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "d0", "text": "one document"}) + "\n")
    rc = main(["run", f"input={source}", f"output={tmp_path / 'out'}", "executor=ray", override])
    assert rc == 1 and expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
