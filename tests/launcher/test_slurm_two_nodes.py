"""`python -m launcher.submit cluster.nodes=2` on a real Slurm of two nodes (tests/local_slurm_nodes.py: one slurmd
per network namespace, node0 and node1): the job runs one torchrun per node with the c10d rendezvous on node0, as
on a cluster; 2 nodes x 1 rank train as one process does (1e-5), and a job requeued mid-run (`scontrol requeue`:
SIGTERM, a checkpoint, Slurm's requeue) resumes and ends with the uninterrupted job's losses, bit for bit."""

from __future__ import annotations

import re

import pytest
from launcher_testing import launch, losses
from slurm_jobs import MAX_STEPS, Frozen, job_env, job_log, job_overrides, submit, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.distributed]

TWO_NODES = ["cluster=local_cpu", "cluster.nodes=2", "cluster.ranks_per_node=1", "cluster.mem=1G", "parallel=fsdp"]


@pytest.fixture(scope="module")
def two_node_slurm(tmp_path_factory):
    from local_slurm import SlurmUnavailable
    from local_slurm_nodes import TwoNodeSlurm
    from netns_hosts import Hosts, NetnsUnavailable

    try:
        hosts = Hosts(2).start()
    except NetnsUnavailable as exc:
        pytest.skip(str(exc))
    cluster = TwoNodeSlurm(tmp_path_factory.mktemp("slurm_two_nodes"), hosts)
    try:
        cluster.start()
    except SlurmUnavailable as exc:
        hosts.stop()
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()
    hosts.stop()


@pytest.fixture(scope="module")
def uninterrupted(two_node_slurm, shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_node_job")
    job = submit(two_node_slurm, [*TWO_NODES, *job_overrides(shards, "whole")], tmp, job_env(two_node_slurm, tmp))
    info = two_node_slurm.wait(job.job_id, 300)
    log = job_log(job.log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    assert info["NodeList"] == "node[0-1]" and "2 node(s) x 1 rank(s)" in log, (info, log[-2000:])
    assert re.search(r"rendezvous node0:\d+", log), log[-2000:]
    return job


def test_slurm_two_nodes_equal_one_process(uninterrupted, shards, tmp_path):
    args = [a for a in job_overrides(shards, "single") if not a.startswith("trainer.name=")]
    launch([*args, "parallel=fsdp", f"trainer.run_dir={tmp_path / 'run'}"], 1, tmp_path)
    got, want = losses(uninterrupted.run_dir), losses(tmp_path / "run")
    assert sorted(got) == sorted(want) == list(range(1, MAX_STEPS + 1))
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5), f"step {step}"


def test_slurm_two_node_job_requeued_mid_run_resumes_exactly(two_node_slurm, uninterrupted, shards, tmp_path):
    job = submit(
        two_node_slurm, [*TWO_NODES, *job_overrides(shards, "requeued")], tmp_path, job_env(two_node_slurm, tmp_path)
    )
    wait_until(
        lambda: (job.run_dir / "metrics.jsonl").exists() and "trainer.run_dir" in job_log(job.log),
        300,
        "the first steps",
        two_node_slurm,
        job.job_id,
    )
    with Frozen(job.run_dir, 2):  # both ranks, one per node: the SIGTERM lands mid-run however fast the run is
        two_node_slurm.run("scontrol", "requeue", job.job_id)
        wait_until(lambda: job_log(job.log).count("closing signal SIGTERM") >= 1, 60, "the node launchers passing TERM")
    info = two_node_slurm.wait(job.job_id, 300)
    log = job_log(job.log)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), log[-4000:]
    stopped_at = int(re.search(r"stop requested \(SIGTERM\): saved step (\d+)", log).group(1))
    assert 0 < stopped_at < MAX_STEPS
    assert f"resumed from {job.run_dir / 'checkpoints' / f'step_{stopped_at:08d}'}" in log
    got, want = losses(job.run_dir), losses(uninterrupted.run_dir)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    assert all(got[step] == want[step] for step in want), "the requeued job does not continue the run exactly"
