"""launcher.submit without a cluster: `--dry-run` renders the job for 16 nodes x 8 GPUs with parallel=3d (golden
file), and the rendered script, run by bash with stand-in srun/scontrol, starts one torchrun per node with 16
nodes and 8 processes per node; a layout that does not fit the allocation is refused before sbatch runs; what
submit renders agrees with slurm/train.sbatch (same body, the same header settings for the same values).
Also launcher.requeue's decision after a preemption (with a stand-in scontrol)."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
from launcher_testing import PYTHON, REPO

from cluster.config import ClusterConfig
from launcher.submit import BODY_MARKER, TEMPLATE, template_body

GOLDEN = Path(__file__).parent / "golden" / "submit_16x8_3d.sbatch"
BIG_JOB = [
    "--dry-run",
    "cluster.nodes=16",
    "cluster.gpus_per_node=8",
    "cluster.cpus_per_task=96",
    "cluster.mem=1000G",
    "cluster.partition=gpu",
    "cluster.account=llm",
    "cluster.time=48:00:00",
    "cluster.python=/opt/loom/bin/python",
    "+cluster.env.NCCL_SOCKET_IFNAME=ib0",
    "parallel=3d",
    "model=llama3_8b",
    "trainer.name=llama8b",
    "trainer.global_batch_size=512",
    "trainer.micro_batch_size=2",
    "data.seq_len=2048",
]


def submit_cmd(args, cwd, path_prefix=None, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    env.update(env_extra)
    return subprocess.run(
        [PYTHON, "-m", "launcher.submit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def submit_main(args, cwd, monkeypatch, capsys, path_prefix=None):
    """`python -m launcher.submit ARGS` in this process (a second each instead of a fresh interpreter)."""
    from launcher.submit import main

    monkeypatch.chdir(cwd)
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    if path_prefix is not None:
        monkeypatch.setenv("PATH", f"{path_prefix}:{os.environ['PATH']}")
    rc = main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, captured.out, captured.err)


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for match in re.finditer(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M):
        options[match.group(1)] = match.group(2) or ""
    return options


def test_dry_run_16_nodes_of_8_gpus_golden(tmp_path):
    # --no-build: the script alone (tests/launcher/test_dry_run.py builds this job and checks its memory)
    result = submit_cmd([*BIG_JOB, "--no-build"], tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = result.stdout.replace(str(tmp_path), "<CWD>").replace(str(REPO), "<REPO>")
    if os.environ.get("LOOM_UPDATE_GOLDEN"):
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "rendered job changed: rerun with LOOM_UPDATE_GOLDEN=1 if intended"
    options = sbatch_options(result.stdout)
    assert options["nodes"] == "16" and options["gpus-per-node"] == "8" and options["ntasks-per-node"] == "1"
    assert "export LOOM_RANKS_PER_NODE=8" in result.stdout
    assert not (tmp_path / "outputs").exists()  # a dry run writes nothing


def test_rendered_script_launches_one_torchrun_per_node(tmp_path, monkeypatch, capsys):
    """Run the rendered script's launch under bash with the variables Slurm sets for this allocation and stand-in
    srun/scontrol/scancel that record their arguments."""
    result = submit_cmd([*BIG_JOB, "--no-build"], tmp_path)
    assert result.returncode == 0, result.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "scontrol", "scancel"):
        stub = bin_dir / tool
        # scontrol names the 16 nodes one write at a time: a script reading only its first line through
        # `| head -n 1` under pipefail would die of SIGPIPE (141) on the second write
        reply = (
            'for i in $(seq 1 16); do printf "gpu-node-%03d\\n" "$i"; sleep 0.02; done'
            if tool == "scontrol"
            else "true"
        )
        stub.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{tmp_path}/{tool}.args"\n{reply}\n')
        stub.chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(result.stdout)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "llama8b",
        "SLURM_JOB_NUM_NODES": "16",
        "SLURM_JOB_NODELIST": "gpu-node-[001-016]",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_CPUS_PER_TASK": "96",
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }
    run = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    argv = (tmp_path / "srun.args").read_text().splitlines()
    head = argv[: argv.index("-m")]
    assert head == [
        "--nodes=16",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--cpus-per-task=96",
        "/opt/loom/bin/python",
    ]
    launcher = argv[argv.index("-m") : argv.index("launcher.train") + 1]
    assert launcher == [
        "-m",
        "launcher.torchrun_node",
        "--nnodes=16",
        "--nproc-per-node=8",
        "--rdzv-id=4242",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=gpu-node-001:{20000 + 4242}",
        "-m",
        "launcher.train",
    ]
    overrides = argv[argv.index("launcher.train") + 1 :]
    assert overrides[:2] == [f"trainer.run_dir={tmp_path}/outputs/llama8b", "trainer.resume=auto"]
    assert "parallel=3d" in overrides and "cluster.nodes=16" in overrides
    assert "12 thread(s) each" in run.stdout  # 96 CPUs / 8 ranks


def test_layout_that_does_not_fit_is_refused_before_sbatch(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/bash\necho "$@" >> "{tmp_path}/sbatch.calls"\necho 4242\n')
    sbatch.chmod(0o755)
    refused = submit_main(
        ["cluster=local_cpu", "cluster.ranks_per_node=2", "parallel=3d"], tmp_path, monkeypatch, capsys, bin_dir
    )
    assert refused.returncode == 2
    assert "config error" in refused.stderr and "1 node(s) x 2 rank(s) per node = 2 processes" in refused.stderr
    assert "parallel" in refused.stderr
    assert not (tmp_path / "sbatch.calls").exists() and not (tmp_path / "outputs").exists()

    batch = submit_main(
        ["cluster=local_cpu", "cluster.ranks_per_node=2", "trainer.global_batch_size=6"], tmp_path, monkeypatch, capsys
    )
    assert batch.returncode == 2 and "trainer.global_batch_size" in batch.stderr
    assert not (tmp_path / "sbatch.calls").exists()

    accepted = submit_main(
        ["cluster=local_cpu", "cluster.ranks_per_node=2", "trainer.name=fits"], tmp_path, monkeypatch, capsys
    )
    assert accepted.returncode == 0, accepted.stderr
    script = tmp_path / "outputs" / "fits" / "slurm_job.sbatch"
    assert (tmp_path / "sbatch.calls").read_text().split() == ["--parsable", str(script)]
    assert accepted.stdout.splitlines() == [
        "submitted job 4242 (fits: 1 node(s) x 2 rank(s))",
        f"run dir: {tmp_path / 'outputs' / 'fits'}",
        f"log: {tmp_path / 'outputs' / 'fits' / 'slurm-4242.out'}",
    ]


def test_bad_cluster_settings_are_refused(tmp_path, monkeypatch, capsys):
    for args, words in (
        (["cluster.nodes=0"], "cluster.nodes=0"),
        (["cluster.time=1", "cluster.signal_lead_s=120"], "cluster.signal_lead_s=120"),
        (["cluster.gpus_per_node=8", "cluster.ranks_per_node=4"], "cluster.ranks_per_node=4"),
        (["cluster.mem=lots"], "cluster.mem"),
    ):
        result = submit_main(["--dry-run", *args], tmp_path, monkeypatch, capsys)
        assert result.returncode == 2 and words in result.stderr, (args, result.stderr)


def test_template_and_submit_agree(tmp_path, monkeypatch, capsys):
    """The rendered body is train.sbatch's; the by-hand header asks what submit asks for the same values."""
    result = submit_main(
        ["--dry-run", "--no-build", "cluster.gpus_per_node=0", "cluster.ranks_per_node=1"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(template_body()) and template_body().startswith(BODY_MARKER)
    by_hand = sbatch_options(TEMPLATE.read_text())
    rendered = sbatch_options(result.stdout)
    defaults = ClusterConfig()
    assert by_hand["time"] == defaults.time and by_hand["signal"] == f"B:USR1@{defaults.signal_lead_s}"
    assert by_hand.pop("output") == "%x-%j.out"  # submit puts the log in the run dir instead
    assert {k: rendered.get(k) for k in by_hand} == by_hand
    documented = TEMPLATE.read_text().split(BODY_MARKER)[0]
    for variable in re.findall(r"^export (LOOM_\w+)=", result.stdout, re.M):
        assert variable in documented, f"{variable} is set by submit but not documented in {TEMPLATE.name}"
        assert f"${{{variable}" in template_body(), f"{variable} is set by submit but never read by the body"


def test_cluster_config_fields_have_docs():
    source = (REPO / "cluster" / "config.py").read_text()
    for field in fields(ClusterConfig):
        assert re.search(rf"^    {field.name}: .*# \S", source, re.M), f"cluster.{field.name} has no one-line doc"


# ------------------------------------------------------------------------------------------ launcher.requeue
def _fake_run(run_dir: Path, max_steps: int, checkpoints: list[int]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"trainer:\n  max_steps: {max_steps}\n")
    for step in checkpoints:
        directory = run_dir / "checkpoints" / f"step_{step:08d}"
        directory.mkdir(parents=True)
        (directory / "COMPLETE").write_text("{}")
    (run_dir / "checkpoints" / "step_00000099").mkdir(parents=True)  # torn: no marker, ignored


@pytest.mark.parametrize(
    "checkpoints, restarts, rc, words, requeued",
    [
        ([10, 50], "0", 0, "run complete at step 50", False),
        ([10, 20], "1", 0, "requeued job 77 (restart 2 of at most 3); it resumes from step 20", True),
        ([], "0", 0, "resumes from the start (no checkpoint yet)", True),
        ([20], "3", 3, "has already restarted 3 time(s) (cluster.max_requeues=3)", False),
    ],
)
def test_requeue_decision(tmp_path, checkpoints, restarts, rc, words, requeued):
    run_dir = tmp_path / "run"
    _fake_run(run_dir, 50, checkpoints)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$@" >> "{tmp_path}/scontrol.calls"\n')
    scontrol.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "SLURM_RESTART_COUNT": restarts,
    }
    result = subprocess.run(
        [PYTHON, "-m", "launcher.requeue", str(run_dir), "--max-requeues", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == rc, result.stderr
    assert words in result.stdout + result.stderr
    calls = (tmp_path / "scontrol.calls").read_text().split() if (tmp_path / "scontrol.calls").exists() else []
    assert calls == (["requeue", "77"] if requeued else [])
