"""`python -m launcher.evaluate`: one process writes results.json (lm-eval's layout), results.md and per-task sample
files; two data-parallel ranks under torchrun (gloo) write byte-identical files; the metric values equal lm-eval's
own `simple_evaluate(model="loom")` on the same tasks; a bad setting exits 2 with the key named.

Byte-identical needs the same float kernels: each rank batches only its share of the requests, and a request
scored in a batch of another padded width, or with another thread count, differs in the last float bits (seen:
2e-6 on one log-likelihood). So the identity is checked at batch size 1 with one thread in every process, and batch
size 3 is held to batch size 1 within float tolerance."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_loom_runs import cached_run, require_lm_eval_hf, write_license_tasks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
REPO = Path(__file__).resolve().parents[2]
TASKS = ["license_choice", "license_ppl", "license_gen"]


def child_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "SLURM_", "TORCHELASTIC_"))
    }
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    return env


def settings(task_dir: Path, output: Path, batch_size: int = 3) -> list[str]:
    return [
        f"eval.tasks=[{','.join(TASKS)}]",
        f"eval.task_dirs=[{task_dir}]",
        f"eval.output={output}",
        "eval.log_samples=true",
        f"eval.batch_size={batch_size}",
        "eval.limit=7",
        "eval.device=cpu",
    ]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_license_tasks(tmp_path_factory.mktemp("tasks"))


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    from launcher.evaluate import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.distributed
def test_two_ranks_write_what_one_process_writes(task_dir, tmp_path):
    run, _ = cached_run("llama")
    code, stdout, stderr = run_in_process([str(run), *settings(task_dir, tmp_path / "one")])
    assert code == 0, stderr
    assert "license_choice" in stdout
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert set(results["results"]) == set(TASKS)
    assert results["n-samples"]["license_choice"]["effective"] == 7
    assert {"configs", "versions", "higher_is_better", "n-shot"} <= results.keys()
    assert results["config"]["model"] == "loom"
    assert "| license_ppl | word_perplexity |" in (tmp_path / "one" / "results.md").read_text()
    for task in TASKS:
        records = (tmp_path / "one" / f"samples_{task}.jsonl").read_text().splitlines()
        assert [json.loads(r)["doc_id"] for r in records] == list(range(7))

    # The one-process reference in a child like the ranks: same thread count, so the same float kernels.
    done = subprocess.run(
        [sys.executable, "-m", "launcher.evaluate", str(run), *settings(task_dir, tmp_path / "one_b1", batch_size=1)],
        check=False,
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    batched = json.loads((tmp_path / "one_b1" / "results.json").read_text())["results"]
    for task in TASKS:
        for key, value in batched[task].items():
            if isinstance(value, float):
                assert results["results"][task][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (task, key)

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "launcher.evaluate",
            str(run),
            *settings(task_dir, tmp_path / "two", batch_size=1),
            "eval.timeout_s=120",
        ],
        check=False,
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for name in ["results.json", "results.md", *(f"samples_{task}.jsonl" for task in TASKS)]:
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one_b1" / name).read_text(), name


def test_metrics_equal_lm_eval_simple_evaluate_on_the_loom_model(task_dir, tmp_path):
    require_lm_eval_hf()
    import lm_eval
    from lm_eval.tasks import TaskManager

    import evaluation.lm_eval_adapter  # noqa: F401  (registers "loom")

    run, _ = cached_run("llama")
    code, _, stderr = run_in_process([str(run), *settings(task_dir, tmp_path / "ours")])
    assert code == 0, stderr
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())["results"]
    reference = lm_eval.simple_evaluate(
        model="loom",
        model_args=f"pretrained={run},batch_size=3",
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(task_dir)),
        limit=7,
    )["results"]
    compared = 0
    for task in TASKS:
        for key, value in reference[task].items():
            if "," in key and isinstance(value, float):
                assert ours[task][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, key)
                compared += 1
    assert compared >= 8  # values and stderrs of acc, acc_norm, the perplexities, exact_match


def test_a_misspelt_setting_exits_2_naming_the_key(task_dir, tmp_path):
    run, _ = cached_run("llama")
    code, _, stderr = run_in_process([str(run), *settings(task_dir, tmp_path / "x"), "eval.batchsize=4"])
    assert code == 2 and "batchsize" in stderr and "eval.batch_size" in stderr
    code, _, stderr = run_in_process(
        [str(run), "eval.tasks=[nope]", f"eval.task_dirs=[{task_dir}]", f"eval.output={tmp_path / 'y'}"]
    )
    assert code == 2 and "nope" in stderr
    code, _, stderr = run_in_process([str(tmp_path / "missing"), *settings(task_dir, tmp_path / "z")])
    assert code == 2 and "missing: no such run directory" in stderr
    assert not any((tmp_path / name).exists() for name in "xyz")
