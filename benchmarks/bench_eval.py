"""Downstream evaluation speed: `python -m launcher.evaluate` on a Loom run against lm-eval's HF backend on the
same model exported to Hugging Face, as whole processes side by side, on the issue's workload (1,000 four-choice
documents and 200 greedy generations).

    python benchmarks/bench_eval.py [--workdir outputs/bench_eval] [--pairs 5]

builds the inputs once (skipped when they exist):
  <workdir>/run     a short `python -m launcher.train` of the default config (model=tiny, data=embedded)
  <workdir>/hf      its export, `python -m model.hf export <run> <hf>`
  <workdir>/tasks   bench_choice (multiple_choice, 1,000 documents, 4 choices) and bench_gen (generate_until, 200
                    documents) as lm-eval YAML over JSONL made from sentences of the licence and copyright texts a
                    Debian machine ships (/usr/share/common-licenses, /usr/share/doc/*/copyright)
then prints the two commands (Loom first, lm-eval second) with the environment both run under (offline, one
thread, the same batch size), and with --pairs N > 0 runs them N times each in turn, A B A B ..., after one warm-up
of each, and prints each run's wall and CPU seconds (the children's rusage) and the ratio Loom / lm-eval pair by
pair with the median. Both write their results files under <workdir>; their numbers agree (one model, one set of
tasks), which --check compares after a run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT_SOURCES = ["/usr/share/common-licenses/*", "/usr/share/doc/*/copyright"]
TRAIN_OVERRIDES = [
    "trainer.eval_every=0",
    "trainer.eval_batches=0",
    "trainer.sample_every=-1",
    "trainer.progress_bar=false",
    "logging.wandb.mode=disabled",
    "logging.plot=false",
    "schedule.warmup_steps=10",
]
ENV = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "WANDB_MODE": "disabled",
}


def sentences(min_words: int = 9) -> list[str]:
    """Sentences (runs of words between '.', ';' or ':' and whitespace) of the machine's licence and copyright
    texts with distinct openings, in a fixed order: licences first, then the packages' copyright files by path.
    Distinct prompts keep every request unique (the evaluator scores identical requests once; lm-eval does not)."""
    by_opening: dict[str, str] = {}  # one sentence per five-word opening: no two documents share a prompt
    for pattern in TEXT_SOURCES:
        for path in sorted(glob.glob(pattern)):
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for piece in re.split(r"[.;:]\s", text):
                words = piece.split()
                if len(words) >= min_words and all(w.isprintable() for w in words):
                    by_opening.setdefault(" ".join(words[:5]), " ".join(words))
    return list(by_opening.values())


def write_tasks(directory: Path, n_choice: int, n_gen: int, max_gen_toks: int) -> Path:
    """bench_choice.yaml (4 choices: the sentence's true next three words and three other sentences' words, gold
    cycling through the positions) and bench_gen.yaml (greedy continuation of six words, exact match against the
    next two), each over its own JSONL."""
    pool = sentences()
    needed = n_choice + n_gen
    if len(pool) < needed:
        raise SystemExit(f"only {len(pool)} sentences found in {TEXT_SOURCES}; {needed} needed")
    directory.mkdir(parents=True, exist_ok=True)
    choice_rows = []
    for i, sentence in enumerate(pool[:n_choice]):
        words = sentence.split()
        true = " ".join(words[5:8])
        others = [" ".join(pool[(i + k * 97) % n_choice].split()[5:8]) for k in (1, 2, 3)]
        gold = i % 4
        choice_rows.append(
            {"context": " ".join(words[:5]), "choices": [*others[:gold], true, *others[gold:]], "gold": gold}
        )
    gen_rows = [
        {"context": " ".join(s.split()[:6]), "answer": " " + " ".join(s.split()[6:8])}
        for s in pool[n_choice : n_choice + n_gen]
    ]
    for name, rows in (("choice", choice_rows), ("gen", gen_rows)):
        (directory / f"bench_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (directory / "bench_choice.yaml").write_text(
        "task: bench_choice\n"
        + common.format(data=(directory / "bench_choice.jsonl").resolve())
        + 'output_type: multiple_choice\ndoc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: gold\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    (directory / "bench_gen.yaml").write_text(
        "task: bench_gen\n"
        + common.format(data=(directory / "bench_gen.jsonl").resolve())
        + 'output_type: generate_until\ndoc_to_text: "{{context}}"\ndoc_to_target: "{{answer}}"\n'
        f'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: {max_gen_toks}\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\nmetadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return directory


def run_checked(cmd: list[str], env: dict[str, str]) -> None:
    print("+", shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def build_inputs(workdir: Path, steps: int, n_choice: int, n_gen: int, max_gen_toks: int) -> tuple[Path, Path, Path]:
    env = {**os.environ, **ENV}
    run, hf, tasks = workdir / "run", workdir / "hf", workdir / "tasks"
    if not (run / "checkpoints").is_dir():
        run_checked(
            [sys.executable, "-m", "launcher.train", f"trainer.run_dir={run}", f"trainer.max_steps={steps}"]
            + [f"trainer.log_every={max(1, steps // 4)}", f"trainer.checkpoint_every={steps}", *TRAIN_OVERRIDES],
            env,
        )
    if not (hf / "config.json").is_file():
        run_checked([sys.executable, "-m", "model.hf", "export", str(run), str(hf)], env)
    write_tasks(tasks, n_choice, n_gen, max_gen_toks)
    return run, hf, tasks


def commands(workdir: Path, run: Path, hf: Path, tasks: Path, batch_size: int) -> tuple[list[str], list[str]]:
    """(Loom's command, lm-eval's command): the same tasks, batch size, dtype and device; results under workdir."""
    loom = [
        sys.executable,
        "-m",
        "launcher.evaluate",
        str(run),
        "eval.tasks=[bench_choice,bench_gen]",
        f"eval.task_dirs=[{tasks}]",
        f"eval.output={workdir / 'out_loom'}",
        f"eval.batch_size={batch_size}",
        "eval.device=cpu",
    ]
    lm_eval_exe = str(Path(sys.executable).with_name("lm_eval"))
    lm_eval = [
        lm_eval_exe,
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={hf},dtype=float32",
        "--tasks",
        "bench_choice,bench_gen",
        "--include_path",
        str(tasks),
        "--device",
        "cpu",
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(workdir / "out_lm_eval"),
    ]
    return loom, lm_eval


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, user+sys CPU seconds of the finished child) of one run; a failed run stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def paired_runs(loom: list[str], lm_eval: list[str], pairs: int) -> None:
    env = {**os.environ, **ENV}
    timed(loom, env)  # warm-up: page cache, the datasets cache lm-eval builds from the JSONL
    timed(lm_eval, env)
    ratios = []
    for pair in range(1, pairs + 1):
        loom_wall, loom_cpu = timed(loom, env)
        ref_wall, ref_cpu = timed(lm_eval, env)
        ratios.append(loom_wall / ref_wall)
        print(
            f"pair {pair}: loom {loom_wall:.2f} s wall ({loom_cpu:.2f} s cpu), lm-eval {ref_wall:.2f} s wall "
            f"({ref_cpu:.2f} s cpu), loom / lm-eval {ratios[-1]:.3f}",
            flush=True,
        )
    print(f"median wall ratio loom / lm-eval over {pairs} pairs: {statistics.median(ratios):.3f}")


def check_agreement(workdir: Path) -> None:
    """Both processes' metrics, side by side (one model, one set of tasks: they should agree)."""
    ours = json.loads((workdir / "out_loom" / "results.json").read_text())["results"]
    found = sorted(
        glob.glob(str(workdir / "out_lm_eval" / "**" / "results_*.json"), recursive=True), key=os.path.getmtime
    )
    if not found:
        raise SystemExit(f"no lm-eval results under {workdir / 'out_lm_eval'}: run its command first")
    theirs = json.loads(Path(found[-1]).read_text())["results"]  # the newest run's
    for task in ("bench_choice", "bench_gen"):
        for key, value in sorted(ours[task].items()):
            if "," in key and "stderr" not in key and key in theirs[task]:
                print(f"{task} {key}: loom {value:.6f}  lm-eval {theirs[task][key]:.6f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "bench_eval")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--choice-docs", type=int, default=1000)
    parser.add_argument("--gen-docs", type=int, default=200)
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=0, help="time N pairs of runs (0: print the commands only)")
    parser.add_argument("--check", action="store_true", help="print both processes' metrics from their last run")
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    run, hf, tasks = build_inputs(workdir, args.train_steps, args.choice_docs, args.gen_docs, args.max_gen_toks)
    loom, lm_eval = commands(workdir, run, hf, tasks, args.batch_size)
    env_words = " ".join(f"{k}={v}" for k, v in ENV.items())
    print(f"cd {REPO}\nexport {env_words}")
    print(f"A (loom):    {shlex.join(loom)}")
    print(f"B (lm-eval): {shlex.join(lm_eval)}")
    if args.pairs > 0:
        paired_runs(loom, lm_eval, args.pairs)
    if args.check:
        check_agreement(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
