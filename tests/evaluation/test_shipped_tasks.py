"""lm-eval's own shipped task YAMLs (hellaswag, arc_easy, piqa, mmlu_anatomy, lambada_openai, wikitext, gsm8k with
its regex filters), `include:`d from the installed package and pointed at small local JSONL copies
(tests/evaluation/shipped_tasks.py), give through our task loader and runner what lm_eval.simple_evaluate gives on
the same YAMLs: with lm-eval's HFLM answering both, every metric, standard error, context and filtered answer is
equal; with LoomScorer on a Loom run against HFLM on its export, the metrics agree to float32 precision. A shipped
feature we cannot run exactly (a Python filter) is refused naming the task and the filter."""

from __future__ import annotations

import json
import math
import re

import pytest
from hf_fixtures import HFLMScorer, hflm, save_tiny_model
from shipped_tasks import SHIPPED, mmlu_docs, shipped_yaml, write_shipped_task_dir
from tiny_loom_runs import cached_run, require_lm_eval_hf

from evaluation.errors import TaskInputError
from evaluation.runner import evaluate
from evaluation.tasks import load_tasks

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BOOTSTRAP = 1000


@pytest.fixture(autouse=True)
def offline_single_thread(monkeypatch):
    import torch

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "DISABLE_MULTIPROC"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lm_eval_results(lm, task_dir, names):
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(names),
        bootstrap_iters=BOOTSTRAP,
        log_samples=True,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
    )


def metric_keys(entry: dict) -> set[str]:
    return {k for k in entry if "," in k}


def same(a, b, rel: float) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=rel)


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory):
    require_lm_eval_hf()
    return write_shipped_task_dir(tmp_path_factory.mktemp("shipped"), n=20)


def test_shipped_tasks_equal_lm_eval_with_its_hflm(shipped_dir, tmp_path):
    lm = hflm(save_tiny_model(tmp_path / "model", "llama"))
    theirs = lm_eval_results(lm, shipped_dir, SHIPPED)
    ours = evaluate(
        load_tasks(list(SHIPPED), [shipped_dir]), HFLMScorer(lm), log_samples=True, bootstrap_iters=BOOTSTRAP
    )
    ours_json = ours.to_lm_eval_json()
    for name in SHIPPED:
        mine, ref = ours_json["results"][name], theirs["results"][name]
        assert metric_keys(mine) == metric_keys(ref), name
        for key in metric_keys(ref):
            assert same(mine[key], ref[key], 1e-9), (name, key, mine[key], ref[key])
        assert mine["sample_len"] == ref["sample_len"], name
        ref_samples, my_samples = theirs["samples"][name], ours.samples[name]
        assert len(my_samples) == len(ref_samples), name
        for m, r in zip(my_samples, ref_samples):
            assert (m["doc_id"], m["filter"]) == (r["doc_id"], r["filter"]), name
            assert [list(a[:1]) for a in m["arguments"]] == [list(a[:1]) for a in r["arguments"]], name
            assert m["filtered_resps"] == [list(x) if isinstance(x, tuple) else x for x in r["filtered_resps"]], name
    assert set(metric_keys(ours_json["results"]["gsm8k"])) == {
        "exact_match,strict-match",
        "exact_match_stderr,strict-match",
        "exact_match,flexible-extract",
        "exact_match_stderr,flexible-extract",
    }
    assert ours_json["n-shot"]["mmlu_anatomy"] == 2 and ours_json["n-shot"]["arc_easy"] == 2


class ScriptedAnswers:
    """Greedy answers written from the gsm8k question itself (right, wrong, in '####' form or loose), so the
    filters' extraction and exact_match's regexes_to_ignore are exercised on known texts. It is our Scorer and,
    through `as_lm_eval_lm`, an lm-eval LM with the same answers."""

    @staticmethod
    def answer(context: str) -> str:
        a, b = map(int, re.findall(r"has (\d+) words and (\d+) more", context)[-1])
        total = a + b
        return [
            f" {a} + {b} = {total}\n#### {total:,}",  # strict and flexible right
            f" It is {total + 1}.",  # both wrong
            f" The sum is ${total}.",  # strict: [invalid]; flexible right
            " I cannot tell.",  # neither finds a number
        ][(a + b) % 4]

    def loglikelihood(self, requests):
        raise AssertionError("gsm8k asks for generations only")

    loglikelihood_rolling = loglikelihood

    def generate_until(self, requests):
        return [self.answer(r.context) for r in requests]

    def as_lm_eval_lm(self):
        from lm_eval.api.model import LM

        answer = self.answer

        class Scripted(LM):
            def loglikelihood(self, requests):
                raise AssertionError("gsm8k asks for generations only")

            loglikelihood_rolling = loglikelihood

            def generate_until(self, requests):
                return [answer(r.args[0]) for r in requests]

        return Scripted()


def test_gsm8k_regex_filters_score_known_answers_as_lm_eval(shipped_dir):
    scripted = ScriptedAnswers()
    theirs = lm_eval_results(scripted.as_lm_eval_lm(), shipped_dir, ["gsm8k"])
    ours = evaluate(load_tasks(["gsm8k"], [shipped_dir]), scripted, log_samples=True, bootstrap_iters=BOOTSTRAP)
    mine, ref = ours.to_lm_eval_json()["results"]["gsm8k"], theirs["results"]["gsm8k"]
    assert metric_keys(mine) == metric_keys(ref)
    for key in metric_keys(ref):
        assert same(mine[key], ref[key], 1e-12), (key, mine[key], ref[key])
    assert 0 < mine["exact_match,strict-match"] < mine["exact_match,flexible-extract"] < 1
    strict = [s["filtered_resps"][0] for s in ours.samples["gsm8k"] if s["filter"] == "strict-match"]
    assert "[invalid]" in strict


def test_shipped_tasks_with_loom_scorer_agree_with_lm_eval_on_the_export(shipped_dir):
    from lm_eval.models.huggingface import HFLM

    from evaluation.loom_scorer import LoomScorer

    names = ("hellaswag", "arc_easy", "piqa", "mmlu_anatomy", "lambada_openai", "wikitext")
    run, hf_dir = cached_run("llama")
    theirs = lm_eval_results(
        HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=1), shipped_dir, names
    )
    ours = evaluate(
        load_tasks(list(names), [shipped_dir]), LoomScorer.load(run, batch_size=4), bootstrap_iters=BOOTSTRAP
    )
    ours_json = ours.to_lm_eval_json()
    for name in names:
        mine, ref = ours_json["results"][name], theirs["results"][name]
        assert metric_keys(mine) == metric_keys(ref), name
        for key in metric_keys(ref):
            assert same(mine[key], ref[key], 1e-4), (name, key, mine[key], ref[key])


def test_a_shipped_python_filter_is_refused_naming_task_and_filter(tmp_path):
    data = tmp_path / "mmlu.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in mmlu_docs(4, 1)))
    template = shipped_yaml("mmlu/flan_cot_zeroshot/mmlu_anatomy.yaml")
    (tmp_path / "cot.yaml").write_text(
        f"include: {template}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {data}\n"
    )
    with pytest.raises(TaskInputError) as err:
        load_tasks(["mmlu_flan_cot_zeroshot_anatomy"], [tmp_path])
    message = str(err.value)
    for part in ("mmlu_flan_cot_zeroshot_anatomy", "flexible-extract", "multi_choice_regex", "cot.yaml"):
        assert part in message, (part, message)


def test_a_filter_pipeline_without_take_first_is_refused(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n')
    (tmp_path / "g.yaml").write_text(
        f"include: {shipped_yaml('gsm8k/gsm8k.yaml')}\ndataset_path: json\nnum_fewshot: 0\ntraining_split: null\n"
        f"fewshot_split: null\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "filter_list:\n  - name: only-regex\n    filter:\n      - function: regex\n"
    )
    with pytest.raises(TaskInputError, match="take_first") as err:
        load_tasks(["gsm8k"], [tmp_path])
    assert "'gsm8k'" in str(err.value) and "only-regex" in str(err.value)


def test_a_split_the_local_copy_lacks_is_refused_naming_the_fix(shipped_dir, tmp_path):
    (tmp_path / "hellaswag.yaml").write_text(
        f"include: {shipped_yaml('hellaswag/hellaswag.yaml')}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {shipped_dir / 'data' / 'hellaswag_val.jsonl'}\n"
    )
    with pytest.raises(TaskInputError, match="training_split: null") as err:
        load_tasks(["hellaswag"], [tmp_path])
    assert "'hellaswag'" in str(err.value) and "'train' is not a split" in str(err.value)
