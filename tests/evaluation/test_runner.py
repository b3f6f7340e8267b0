"""The runner without a model: a deterministic stand-in Scorer checks deduplication, rank sharding (answers put
back in order), the results layout, Markdown, samples, saved `datasets` input, and that the core imports no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from task_fixtures import write_task_dir

from evaluation.runner import evaluate
from evaluation.tasks import load_tasks

TASKS = ["cloze", "license_ppl", "license_complete"]


class HashScorer:
    """Answers that depend only on the request (so any order or split of the requests gives the same results)."""

    def __init__(self) -> None:
        self.seen: list = []

    @staticmethod
    def _h(*parts: str) -> int:
        return zlib.crc32("\x00".join(parts).encode("utf-8"))

    def loglikelihood(self, requests):
        self.seen += requests
        return [
            (-(self._h(r.context, r.continuation) % 9973) / 997.0, self._h(r.continuation) % 3 == 0) for r in requests
        ]

    def loglikelihood_rolling(self, requests):
        self.seen += requests
        return [-len(r.text) * (1 + (self._h(r.text) % 100) / 100.0) for r in requests]

    def generate_until(self, requests):
        self.seen += requests
        return [" ".join(r.context.split()[-(self._h(r.context) % 5 + 1) :]) for r in requests]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_task_dir(tmp_path_factory.mktemp("tasks"))


def test_identical_requests_are_scored_once(task_dir, tmp_path):
    twin = tmp_path / "twin.yaml"  # the same documents and templates under another name: every request repeats
    twin.write_text((task_dir / "license_ppl.yaml").read_text().replace("task: license_ppl", "task: license_ppl_twin"))
    scorer = HashScorer()
    results = evaluate(load_tasks(["license_ppl", "license_ppl_twin"], [task_dir, tmp_path]), scorer)
    n_docs = results.results["license_ppl"]["sample_len"]
    assert len(scorer.seen) == len(set(scorer.seen)) == n_docs
    a, b = results.results["license_ppl"], results.results["license_ppl_twin"]
    assert a["bits_per_byte,none"] == b["bits_per_byte,none"]


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_ranks_give_the_single_rank_results(task_dir, world_size):
    single = evaluate(load_tasks(TASKS, [task_dir]), HashScorer(), log_samples=True, bootstrap_iters=200)
    barrier = threading.Barrier(world_size)
    slots: list = [None] * world_size
    outputs: dict[int, object] = {}
    scorers = [HashScorer() for _ in range(world_size)]

    def run(rank: int) -> None:
        def gather(answers):  # what torch.distributed.all_gather_object gives every rank
            slots[rank] = answers
            barrier.wait()
            everyone = list(slots)
            barrier.wait()
            return everyone

        outputs[rank] = evaluate(
            load_tasks(TASKS, [task_dir]),
            scorers[rank],
            log_samples=True,
            rank=rank,
            world_size=world_size,
            gather=gather,
            bootstrap_iters=200,
        )

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = json.dumps(single.to_lm_eval_json(), sort_keys=True, default=str)
    for rank in range(world_size):
        assert json.dumps(outputs[rank].to_lm_eval_json(), sort_keys=True, default=str) == expected
        assert outputs[rank].samples == single.samples
    shares = [set(s.seen) for s in scorers]
    assert sum(len(s) for s in shares) == len(set().union(*shares))  # no request scored on two ranks
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 3  # an even split (one per request kind)


def test_results_layout_markdown_flat_metrics_and_samples(task_dir, tmp_path):
    results = evaluate(load_tasks(TASKS, [task_dir]), HashScorer(), log_samples=True, limit=5)
    data = results.to_lm_eval_json()
    assert set(data["results"]) == {"cloze", "cloze_gpl", "cloze_apache", "license_ppl", "license_complete"}
    assert data["results"]["cloze_gpl"]["sample_len"] == 5
    assert data["n-samples"]["cloze_gpl"] == {"original": 20, "effective": 5}
    assert data["groups"]["cloze"]["sample_len"] == 10
    assert data["group_subtasks"] == {"cloze": ["cloze_gpl", "cloze_apache"]}
    assert data["versions"]["cloze"] == "2.0" and data["n-shot"]["cloze_gpl"] == 3
    assert isinstance(data["results"]["license_ppl"]["bits_per_byte,none"], float)
    assert data["results"]["license_ppl"]["bits_per_byte_stderr,none"] == "N/A"
    table = results.to_markdown().splitlines()
    assert table[0] == "| Task | Metric | Value | Stderr | N docs |"
    assert any(line.startswith("| cloze_gpl | acc_norm |") and line.endswith("| 5 |") for line in table)
    flat = results.flat_metrics()
    assert flat["cloze_gpl/acc"] == data["results"]["cloze_gpl"]["acc,none"]
    assert flat["license_complete/bleu"] == data["results"]["license_complete"]["bleu,none"]
    sample = results.samples["cloze_gpl"][0]
    assert sample["context"].startswith("Each sentence ends with the word that fits.\n\n")
    assert len(sample["resps"]) == 4 and isinstance(sample["resps"][0][0][1], bool)
    assert set(sample["metrics"]) == {"acc", "acc_norm", "brier_score", "bits_per_byte"}
    generated = results.samples["license_complete"][0]
    assert generated["arguments"][0][1]["until"] == ["\n", "."] and isinstance(generated["filtered_resps"][0], str)
    out = tmp_path / "out" / "results.json"
    results.write_json(out, with_samples=True)
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(data["results"]))


def test_saved_datasets_directory_reads_like_the_json_files(task_dir, tmp_path):
    import datasets

    rows = [json.loads(line) for line in (task_dir.parent / "data" / "license_paragraphs.jsonl").open()]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    yaml_text = (task_dir / "license_ppl.yaml").read_text().replace("task: license_ppl", "task: saved_ppl")
    yaml_text = yaml_text.replace("dataset_path: json", f"dataset_path: {tmp_path / 'saved'}")
    (tmp_path / "saved_ppl.yaml").write_text(
        yaml_text.split("dataset_kwargs")[0] + "test_split: test\n" + yaml_text.split("test_split: test\n")[1]
    )
    saved = evaluate(load_tasks(["saved_ppl"], [tmp_path]), HashScorer()).results["saved_ppl"]
    json_run = evaluate(load_tasks(["license_ppl"], [task_dir]), HashScorer()).results["license_ppl"]
    assert saved["word_perplexity,none"] == json_run["word_perplexity,none"]


def test_the_evaluation_core_imports_no_torch():
    code = (
        "import sys; import evaluation.runner, evaluation.results, evaluation.tasks, evaluation.metrics; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


def test_generation_metrics_equal_rouge_score_and_sacrebleu_on_overlapping_text(task_dir):
    """Answers that overlap the references (some exact, some with words dropped) so every score is non-trivial."""
    import sacrebleu
    from rouge_score import rouge_scorer

    rows = [json.loads(line) for line in (task_dir.parent / "data" / "complete_test.jsonl").open()]
    by_prompt = {r["prompt"]: r["answer"] for r in rows}

    class NearlyRight(HashScorer):
        def generate_until(self, requests):
            out = []
            for r in requests:
                answer = by_prompt[r.context.rsplit("Continue: ", 1)[1]]
                words = answer.split()
                out.append(answer.upper() if len(out) % 4 == 0 else " ".join(words[:: 1 + len(out) % 3]))
            return out

    results = evaluate(load_tasks(["license_complete"], [task_dir]), NearlyRight(), log_samples=True)
    got = results.results["license_complete"]
    refs = [r["answer"] for r in rows]
    preds = [s["filtered_resps"][0] for s in results.samples["license_complete"]]
    assert got["exact_match,none"] == sum(p.lower() == r.lower() for p, r in zip(preds, refs)) / len(refs) > 0
    assert got["bleu,none"] == sacrebleu.corpus_bleu(preds, [refs]).score > 10
    assert got["chrf,none"] == sacrebleu.corpus_chrf(preds, [refs]).score > 10
    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        scorer = rouge_scorer.RougeScorer([rouge_type])
        values = [scorer.score(r, p)[rouge_type].fmeasure for r, p in zip(refs, preds)]
        assert got[f"{rouge_type},none"] == sum(values) / len(values) > 0.1
