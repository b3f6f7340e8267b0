"""The dry run at full world size (launcher/dry_run.py): the real laid-out model of each pipeline stage's rank 0,
built on the meta device over a fake process group of 128 ranks, holds the weights, gradients and AdamW state the
estimate (parallel/estimate.py) gives for the same layout, to 1%, within two minutes; launcher.submit refuses a
layout larger than cluster.gpu_memory_gb before sbatch runs, and submits one that fits."""

from __future__ import annotations

import os
import time

import pytest

from launcher.dry_run import DryRunReport, dry_run, format_report
from model.counting import parameter_counts
from parallel.footprint import stage_first_ranks, zero_state_bytes

STATE = ("weights", "gradients", "optimizer")
LLAMA_16X8_3D = [  # the golden job of tests/launcher/test_submit_render.py: pp 2 x dp_shard 32 x tp 2
    "cluster.nodes=16",
    "cluster.gpus_per_node=8",
    "parallel=3d",
    "model=llama3_8b",
    "trainer.global_batch_size=512",
    "trainer.micro_batch_size=2",
    "data.seq_len=2048",
]
DEEPSEEK_V3_EP = [  # 128 ranks of FSDP, the routed experts spread over 8 of them
    "cluster.nodes=16",
    "cluster.gpus_per_node=8",
    "parallel=ep",
    "parallel.ep=8",
    "model=deepseek_v3",
    "trainer.global_batch_size=128",
    "trainer.micro_batch_size=1",
    "data.seq_len=4096",
    "parallel.ac_mode=full",
]
TINY = [
    "model=tiny",
    "cluster.gpus_per_node=0",
    "cluster.ranks_per_node=4",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=2",
]


def timed_dry_run(overrides: list[str]) -> tuple[DryRunReport, float]:
    start = time.perf_counter()
    report = dry_run(overrides)
    return report, time.perf_counter() - start


def assert_built_equals_estimate(report: DryRunReport) -> None:
    for rank in report.ranks:
        assert rank.estimated is not None, report.estimate_note
        for key in STATE:
            built, estimated = rank.built[key], rank.estimated[key]
            assert built == pytest.approx(estimated, rel=0.01), (rank.rank, key, built, estimated)


def test_llama3_8b_on_16_nodes_of_8_with_3d_parallel_matches_the_estimate():
    report, seconds = timed_dry_run(LLAMA_16X8_3D)
    print(format_report(report))
    assert seconds < 120
    assert report.plan.world_size == 128
    assert [(r.rank, r.stages) for r in report.ranks] == [(0, (0,)), (64, (1,))]
    assert_built_equals_estimate(report)
    # The stages hold different layers (the output projection on the last), and together, times the 64 ranks of
    # each stage (dp_shard 32 x tp 2) sharding them, every parameter of the model (FSDP pads the last shard).
    first, last = report.ranks
    assert first.layers == (0, 16) and last.layers == (17, 31)
    assert first.built["parameters"] != last.built["parameters"]
    total = sum(r.built["parameters"] for r in report.ranks) * 64
    assert total == pytest.approx(parameter_counts(report.plan.plan.cfg.model).total, rel=0.001)
    # fp32 weights and gradients, AdamW's two fp32 moments (plus a 4-byte step count per parameter tensor)
    for rank in report.ranks:
        assert rank.built["weights"] == rank.built["gradients"] == 4 * rank.built["parameters"]
        assert 0 <= rank.built["optimizer"] - 8 * rank.built["parameters"] < 4096


def test_deepseek_v3_with_expert_parallel_matches_the_estimate():
    report, seconds = timed_dry_run(DEEPSEEK_V3_EP)
    assert seconds < 120
    assert [(r.rank, r.stages) for r in report.ranks] == [(0, (0,))]
    assert_built_equals_estimate(report)
    (rank,) = report.ranks
    # every parameter (and the MTP module) over 128 ranks: dense over dp_shard 128, experts over ep 8 x 16
    counts = parameter_counts(report.plan.plan.cfg.model)
    assert rank.built["parameters"] * 128 == pytest.approx(counts.total, rel=0.001)


def test_muon_state_matches_the_estimate():
    """optim=muon: one fp32 momentum per hidden-matrix element (Muon) and two AdamW moments for the embedding,
    the output head and the norms, built and estimated alike, under TP x FSDP x PP."""
    report, _ = timed_dry_run(LLAMA_16X8_3D + ["optim=muon"])
    assert_built_equals_estimate(report)
    for rank in report.ranks:
        params = rank.built["parameters"]
        assert 4 * params < rank.built["optimizer"] < 6 * params, (rank.rank, rank.built)


def test_deepspeed_zero_is_sized_from_the_built_parameter_count():
    report, _ = timed_dry_run([*TINY, "parallel=zero2", "trainer.precision=bf16"])
    assert_built_equals_estimate(report)
    (rank,) = report.ranks
    total = parameter_counts(report.plan.plan.cfg.model).total
    assert rank.built == zero_state_bytes(total, 4, 2, 2).to_dict()
    assert rank.built["weights"] == 2 * total  # bf16 weights whole, gradients and fp32 master + moments in 4 parts


def test_zero_partitions_and_stage_ranks():
    z1, z3 = zero_state_bytes(10, 4, 1, 4), zero_state_bytes(10, 4, 3, 2)
    assert (z1.weights, z1.gradients, z1.optimizer) == (40, 40, 3 * 8)  # fp32: no master copy
    assert (z3.weights, z3.gradients, z3.optimizer) == (3 * 2, 3 * 2, 3 * 12)
    assert stage_first_ranks(4, 128) == [0, 32, 64, 96] and stage_first_ranks(1, 8) == [0]
    with pytest.raises(ValueError, match="pp=3"):
        stage_first_ranks(3, 8)


def _stand_in_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/bash\necho "$@" >> "{tmp_path}/sbatch.calls"\necho 4242\n')
    sbatch.chmod(0o755)
    return bin_dir


def test_submit_refuses_a_layout_larger_than_gpu_memory_before_sbatch(tmp_path, monkeypatch, capsys):
    from launcher.submit import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{_stand_in_sbatch(tmp_path)}:{os.environ['PATH']}")
    fsdp = [*TINY, "parallel=fsdp", "trainer.name=tiny"]

    rc = main([*fsdp, "cluster.gpu_memory_gb=0.001"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "cluster.gpu_memory_gb=0.001" in err and "nothing was submitted" in err
    assert "built / est GiB" in err  # the per-rank table, on stderr
    assert "parallel.dp_shard" in err  # what to change
    assert not (tmp_path / "sbatch.calls").exists() and not (tmp_path / "outputs").exists()

    rc = main([*fsdp, "cluster.gpu_memory_gb=80"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "fits" in err and out.startswith("submitted job 4242")
    assert (tmp_path / "sbatch.calls").exists()


def test_submit_dry_run_prints_the_script_and_the_table(tmp_path, monkeypatch, capsys):
    from launcher.submit import main

    monkeypatch.chdir(tmp_path)
    rc = main(["--dry-run", *TINY, "parallel=fsdp", "cluster.gpu_memory_gb=0.001"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out.startswith("#!/bin/bash") and "# ---- shared body:" in out  # stdout stays the script
    lines = err.splitlines()
    assert lines[0].startswith("dry run: tiny on 4 ranks")
    row = next(line for line in lines if line.startswith("0 "))
    assert "/" in row and "DOES NOT FIT" in err


def test_dry_run_command_refuses_bad_keys_before_building(capsys):
    from launcher.dry_run import main

    for args, words in (
        (["parallel.tpp=2"], "parallel.tpp"),
        (["cluster.gpu_memory_gb=-1"], "cluster.gpu_memory_gb=-1"),
        (["cluster.gpus_per_node=0", "cluster.ranks_per_node=3", "parallel=3d"], "3 processes"),
        (["--bogus"], "unknown option"),
    ):
        assert main(args) == 2, args
        assert words in capsys.readouterr().err, args
