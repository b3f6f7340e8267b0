"""benchmarks/bench_eval.py builds the issue's workload as our loader and lm-eval read it: 1,000 four-choice
documents with the gold choice spread over the four positions and 200 generation documents, and the two commands
name the same tasks, batch size and device."""

from __future__ import annotations

from pathlib import Path

import bench_eval

from evaluation.tasks import load_tasks


def test_tasks_hold_the_issue_workload(tmp_path):
    tasks_dir = bench_eval.write_tasks(tmp_path / "tasks", n_choice=1000, n_gen=200, max_gen_toks=32)
    choice, gen = load_tasks(["bench_choice", "bench_gen"], [tasks_dir])
    assert (choice.output_type, len(choice.docs)) == ("multiple_choice", 1000)
    assert all(len(d["choices"]) == 4 and d["choices"][d["gold"]] for d in choice.docs)
    assert {d["gold"] for d in choice.docs} == {0, 1, 2, 3}
    assert sum(len(set(d["choices"])) < 4 for d in choice.docs) < 50  # distractors differ from the true words
    assert (gen.output_type, len(gen.docs), gen.generation["max_gen_toks"]) == ("generate_until", 200, 32)
    contexts = [d["context"] for d in gen.docs]
    assert len(set(contexts)) == 200 and len({d["context"] for d in choice.docs}) == 1000


def test_both_commands_run_the_same_tasks_and_settings(tmp_path):
    loom, lm_eval = bench_eval.commands(tmp_path, Path("run"), Path("hf"), tmp_path / "tasks", batch_size=8)
    assert loom[1:4] == ["-m", "launcher.evaluate", "run"]
    assert "eval.tasks=[bench_choice,bench_gen]" in loom and "eval.batch_size=8" in loom
    assert lm_eval[lm_eval.index("--tasks") + 1] == "bench_choice,bench_gen"
    assert lm_eval[lm_eval.index("--batch_size") + 1] == "8" and "pretrained=hf,dtype=float32" in lm_eval
    assert bench_eval.ENV["HF_DATASETS_OFFLINE"] == "1" and bench_eval.ENV["OMP_NUM_THREADS"] == "1"
