"""`python -m launcher.ablate` (launcher/ablate.py): a planted difference between two data variants is found, a killed
ablation resumes only its unfinished runs into the report an uninterrupted one writes, bad specs are refused before
anything runs, and the Slurm path (one launcher.submit job per run, a variant built by the data pipeline) runs
against the real local Slurm.

The variants (ablation_corpus.py): Python's standard-library docstrings as they are (`clean`), and the same with
every third document replaced by boilerplate and repeated lines (`noisy`); tasks from held-out docstrings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from ablation_corpus import TASKS, write_variants
from launcher_testing import PYTHON, REPO, child_env, wait_for

SEEDS = [0, 1]
TOKENS_PER_STEP = 8 * 64
RECIPE_OVERRIDES = [
    "data=packed",
    "data.seq_len=64",
    "model.vocab_size=512",
    "model.dim=64",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.max_seq_len=64",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=8",
    "trainer.log_every=10",
    "trainer.eval_every=0",
    "trainer.eval_batches=0",
    "trainer.sample_every=-1",
    "trainer.checkpoint_every=40",
    "trainer.keep_checkpoints=1",
    "trainer.progress_bar=false",
    "logging.wandb.mode=disabled",
    "logging.plot=false",
    "schedule.warmup_steps=10",
    "eval.max_length=64",
    "eval.batch_size=16",
    "eval.bootstrap_iters=0",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_variants(tmp_path_factory.mktemp("ablation_corpus"))


def write_spec(path: Path, corpus: dict[str, Path], output: Path, seeds=SEEDS, **changes) -> Path:
    """120 steps of 512 tokens per run, evaluated every 40 steps."""
    spec = {
        "name": "planted",
        "output": str(output),
        "recipe": {
            "tokens": 120 * TOKENS_PER_STEP,
            "eval_every_tokens": 40 * TOKENS_PER_STEP,
            "seeds": list(seeds),
            "tasks": list(TASKS),
            "task_dirs": [str(corpus["tasks"])],
            "overrides": RECIPE_OVERRIDES,
        },
        "variants": {"clean": {"shards": str(corpus["clean"])}, "noisy": {"shards": str(corpus["noisy"])}},
    }
    for key, value in changes.items():  # "variants.noisy.overrides" -> spec["variants"]["noisy"]["overrides"]
        *parents, last = key.split(".")
        node = spec
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path.write_text(yaml.safe_dump(spec))
    return path


def ablate(spec: Path, tmp_path: Path, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "launcher.ablate", str(spec)],
        cwd=REPO,
        env=env or child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
        **kwargs,
    )


def _comparable(report: Path, output: Path) -> str:
    return report.read_text().replace(str(output), "<output>")


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory) -> Path:
    """The ablation run once from start to end: 2 variants x 2 seeds."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    out = tmp / "out"
    result = ablate(write_spec(tmp / "a.yaml", corpus, out), tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_planted_difference_is_found(uninterrupted):
    out = uninterrupted
    summary = json.loads((out / "report.json").read_text())
    for metric in ("abl_cloze/acc", "abl_ppl/bits_per_byte"):
        clean, noisy = summary["final"][metric]["clean"], summary["final"][metric]["noisy"]
        margin = (clean["mean"] - noisy["mean"]) * (-1 if metric.endswith("bits_per_byte") else 1)
        assert summary["ranking"][metric] == ["clean", "noisy"], (metric, clean, noisy)
        assert margin > max(clean["spread"], noisy["spread"]), (metric, clean, noisy)
    assert summary["curves"]["abl_cloze/acc"]["clean"]["tokens"] == [40 * 512, 80 * 512, 120 * 512]
    assert (out / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert "| abl_cloze/acc | higher |" in (out / "report.md").read_text()


def test_a_killed_ablation_resumes_only_unfinished_runs_into_the_same_report(corpus, uninterrupted, tmp_path):
    out = uninterrupted
    # The same ablation killed while its third run trains (the first two complete), then run again.
    resumed = tmp_path / "resumed"
    spec = write_spec(tmp_path / "b.yaml", corpus, resumed)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(
        [PYTHON, "-m", "launcher.ablate", str(spec)],
        cwd=REPO,
        env=child_env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes the training child with it
    )
    third = resumed / "runs" / "noisy-s0" / "checkpoints" / "step_00000040" / "COMPLETE"
    wait_for(third.exists, 180, "the third run's first checkpoint", procs=[proc])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumed / "report.md").exists()
    finished = {
        name: (resumed / "runs" / name / "metrics.jsonl").stat().st_mtime_ns for name in ("clean-s0", "clean-s1")
    }
    result = ablate(spec, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 of 4 run(s) complete; 2 to train" in result.stdout
    assert "training clean-s" not in result.stdout
    for name, mtime in finished.items():  # the finished runs were not touched
        assert (resumed / "runs" / name / "metrics.jsonl").stat().st_mtime_ns == mtime
    assert _comparable(resumed / "report.json", resumed) == _comparable(out / "report.json", out)
    assert _comparable(resumed / "report.md", resumed) == _comparable(out / "report.md", out)
    assert (resumed / "plot.png").read_bytes() == (out / "plot.png").read_bytes()

    # Nothing missing: a third run trains nothing and rewrites the same report.
    result = ablate(spec, tmp_path)
    assert "4 of 4 run(s) complete; 0 to train" in result.stdout
    assert _comparable(resumed / "report.md", resumed) == _comparable(out / "report.md", out)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"variants.noisy": {"path": "/somewhere"}}, "variants.noisy"),
        ({"variants.noisy": {}}, "variants.noisy: unknown data source"),
        ({"variants.noisy": {"shards": "/does/not/exist"}}, "variants.noisy.shards=/does/not/exist"),
        (
            {"variants.noisy": {"input": "RAW", "pipeline": "default", "pipeline_overrides": ["no_such_key=1"]}},
            "variants.noisy: pipeline config refused",
        ),
        (
            {
                "variants.noisy": {
                    "input": "RAW",
                    "pipeline": "default",
                    "pipeline_overrides": ["pipeline.steps.4.params.nosuch=1"],
                }
            },
            "variants.noisy: pipeline config refused",
        ),
        (
            {"variants.noisy": {"input": "RAW", "pipeline": "clean"}},
            "variants.noisy.pipeline=clean",
        ),
        ({"variants.noisy.overrides": ["trainer.max_steps=100"]}, "variants.noisy.overrides: trainer.max_steps"),
        (
            {"variants.noisy.overrides": ["trainer.global_batch_size=7"]},
            "variants.noisy: recipe.tokens=61440 is not a whole number of steps of 448 tokens",
        ),
        ({"variants.noisy.overrides": ["model.no_such_key=3"]}, "variants.noisy: training config refused"),
        ({"recipe.tokenz": 5}, "recipe.tokenz"),
        ({"slurm": True, "cluster": ["cluster=local_cpu", "cluster.nodes=0"]}, "cluster.nodes=0 must be >= 1"),
    ],
)
def test_bad_spec_is_refused_before_anything_runs(corpus, tmp_path, capsys, changes, expected):
    from launcher.ablate import main

    changes = json.loads(json.dumps(changes).replace('"RAW"', json.dumps(str(corpus["clean_jsonl"]))))
    out = tmp_path / "out"
    spec = write_spec(tmp_path / "bad.yaml", corpus, out, **changes)
    assert main([str(spec)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "[nothing was run]" in err, err
    assert not out.exists()


def test_slurm_path_two_variants_one_seed_with_a_pipeline_variant(slurm, corpus, tmp_path):
    """`clean` from its shards, `piped` from the raw clean text through the default pipeline (its tokenizer fixed
    to the shared one); one launcher.submit job per run on the local Slurm; the reports link each other."""
    out = tmp_path / "slurm_ablation"
    piped = {
        "input": str(corpus["clean_jsonl"]),
        "pipeline": "default",
        "pipeline_overrides": ["tasks=1", f"pipeline.steps.7.params.tokenizer={corpus['tokenizer']}"],
    }
    spec = write_spec(
        tmp_path / "slurm.yaml",
        corpus,
        out,
        seeds=[0],
        **{
            "variants.noisy": None,
            "variants.piped": piped,
            "slurm": True,
            "cluster": ["cluster=local_cpu", "cluster.cpus_per_task=1", "cluster.ranks_per_node=1"],
        },
    )
    env = slurm.env(child_env(tmp_path))
    # The command killed once it has submitted both jobs: the re-run waits for those jobs, submitting nothing.
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "launcher.ablate", str(spec)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: log_path.read_text().count("submitted ") == 2, 180, "two submitted jobs", procs=[proc])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result = ablate(spec, tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted " not in result.stdout, result.stdout
    for name in ("clean-s0", "piped-s0"):
        assert len(list((out / "runs" / name).glob("slurm-*.out"))) == 1, f"{name}: not one Slurm job"
    summary = json.loads((out / "report.json").read_text())
    assert sorted(summary["final"]["abl_cloze/acc"]) == ["clean", "piped"]
    pipe = summary["variants"]["piped"]["pipeline"]
    assert pipe["steps"][-1] == "tokenize" and len(pipe["input_fingerprint"]) == 64
    report = (out / "report.md").read_text()
    assert "[pipeline report](data/piped/report.md)" in report and pipe["input_fingerprint"][:16] in report
    assert "[planted](../../report.md): variant **piped**" in (out / "data" / "piped" / "report.md").read_text()

    # Re-running reuses the pipeline output and submits nothing.
    result = ablate(spec, tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "reusing the finished pipeline output" in result.stdout and "submitted " not in result.stdout
    assert (out / "data" / "piped" / "report.md").read_text().count("variant **piped**") == 1


def test_example_spec_plans(corpus, tmp_path, capsys):
    """configs/ablation/example.yaml passes every check once its input exists; --dry-run runs nothing."""
    from launcher.ablate import main

    raw = str(corpus["clean_jsonl"])
    out = tmp_path / "example"
    args = [f"variants.default.input={raw}", f"variants.c4_first.input={raw}", f"output={out}", "--dry-run"]
    assert main([str(REPO / "configs" / "ablation" / "example.yaml"), *args]) == 0
    printed = capsys.readouterr().out
    assert "run c4_first-s1: 300 steps, evaluated at steps [100, 200, 300] [to train]" in printed, printed
    assert "data default: python -m data_pipeline run pipeline=default" in printed
    assert not out.exists()


def test_a_variant_with_another_batch_shape_keeps_the_token_budget_and_points(corpus, tmp_path):
    """16 sequences of 32 tokens instead of 8 of 64: the same tokens per step, so the same steps; 16 of 64: half the
    steps, evaluated at the same token counts."""
    from launcher.ablation_spec import load_spec, plan

    spec = write_spec(
        tmp_path / "shape.yaml",
        corpus,
        tmp_path / "out",
        seeds=[0],
        **{"variants.noisy.overrides": ["trainer.global_batch_size=16", "trainer.micro_batch_size=16"]},
    )
    runs = {run.variant: run for run in plan(load_spec(spec)).runs}
    clean, noisy = runs["clean"], runs["noisy"]
    assert (clean.max_steps, clean.eval_steps) == (120, [40, 80, 120])
    assert (noisy.max_steps, noisy.eval_steps) == (60, [20, 40, 60])
    assert [s * noisy.tokens_per_step for s in noisy.eval_steps] == [s * 512 for s in clean.eval_steps]
