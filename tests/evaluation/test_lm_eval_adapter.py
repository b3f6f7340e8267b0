"""lm-eval's own evaluator with the "loom" model type: `simple_evaluate(model="loom")` on a Loom run directory gives
the metrics `simple_evaluate(model="hf")` gives on its Hugging Face export, for three local tasks (multiple choice,
rolling log-likelihood, greedy generation); `python -m evaluation.lm_eval_cli run --model loom ...` runs lm-eval's
CLI on it and writes the same numbers."""

from __future__ import annotations

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
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def numbers(results: dict) -> dict[str, float]:
    return {
        f"{task}/{key}": value
        for task, entry in results["results"].items()
        for key, value in entry.items()
        if "," in key and isinstance(value, (int, float))
    }


def assert_same_numbers(ours: dict, reference: dict, tol: float = 1e-4) -> None:
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert abs(ours[key] - value) <= tol * max(1.0, abs(value)), (key, ours[key], value)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return write_license_tasks(tmp_path_factory.mktemp("tasks"))


def evaluate_with(model: str, model_args: str, task_dir: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=TASKS,
        batch_size=2,
        task_manager=TaskManager(include_path=str(task_dir)),
        bootstrap_iters=0,
        log_samples=False,
    )


def test_simple_evaluate_loom_equals_hf_on_the_export(task_dir):
    require_lm_eval_hf()
    import evaluation.lm_eval_adapter  # noqa: F401  (registers "loom")

    run, hf_dir = cached_run("llama")
    ours = evaluate_with("loom", f"pretrained={run}", task_dir)
    reference = evaluate_with("hf", f"pretrained={hf_dir},dtype=float32,device=cpu", task_dir)
    assert_same_numbers(numbers(ours), numbers(reference))
    assert {"license_choice/acc,none", "license_ppl/word_perplexity,none", "license_gen/exact_match,none"} <= numbers(
        ours
    ).keys()
    assert ours["n-samples"] == reference["n-samples"]


def test_lm_eval_cli_runs_the_loom_model(task_dir, tmp_path):
    require_lm_eval_hf()
    import evaluation.lm_eval_adapter  # noqa: F401

    run, _ = cached_run("llama")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation.lm_eval_cli",
            "run",
            "--model",
            "loom",
            "--model_args",
            f"pretrained={run},batch_size=3",
            "--tasks",
            ",".join(TASKS),
            "--include_path",
            str(task_dir),
            "--output_path",
            str(tmp_path / "out"),
        ],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = list((tmp_path / "out").rglob("results_*.json"))
    assert len(files) == 1, files
    written = json.loads(files[0].read_text())
    assert written["config"]["model"] == "loom"
    values = {k: v for k, v in numbers(written).items() if "_stderr," not in k}
    reference = numbers(evaluate_with("loom", f"pretrained={run}", task_dir))
    assert_same_numbers(values, {k: v for k, v in reference.items() if "_stderr," not in k})


def test_generation_settings_that_are_not_greedy_are_refused():
    require_lm_eval_hf()
    from evaluation.lm_eval_adapter import generation_request

    request = generation_request("Q:", {"until": "\n", "max_new_tokens": 5, "do_sample": False, "temperature": 0})
    assert (request.until, request.max_gen_toks) == (("\n",), 5)
    with pytest.raises(ValueError, match="greedily"):
        generation_request("Q:", {"do_sample": True, "temperature": 0.7})
    with pytest.raises(ValueError, match="top_p"):
        generation_request("Q:", {"until": ["\n"], "top_p": 0.9})
