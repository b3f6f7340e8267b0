"""Our evaluator against lm-evaluation-harness itself: the same YAML tasks, the same HFLM (a tiny random Llama and
a tiny Qwen3-MoE), so the same log-likelihoods and generations go in; every aggregated metric and standard error,
every rendered context and per-document value must come out equal (to 1e-9)."""

from __future__ import annotations

import math

import pytest
from hf_fixtures import HFLMScorer, hflm, save_tiny_model
from task_fixtures import write_task_dir

TASKS = ["cloze", "cloze_gpl2", "license_last_word", "license_ppl", "license_complete", "license_complete_any"]
LOGLIKELIHOOD_TASKS = ("cloze_gpl", "cloze_apache", "cloze_gpl2", "license_last_word")
BOOTSTRAP = 2000  # perplexity: two chunks of 1000 resamples (seeds 0, 1); bleu/chrf: lm-eval caps at 100


def _register_rouge_in_lm_eval() -> None:
    """lm-eval has no built-in ROUGE; give it one computed by rouge-score directly (the reference definition)."""
    from lm_eval.api.registry import metric_registry, register_metric
    from rouge_score import rouge_scorer

    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        if rouge_type in metric_registry:
            continue

        def score(references, predictions, _type=rouge_type):
            scorer = rouge_scorer.RougeScorer([_type], use_stemmer=False)
            return scorer.score(references[0], predictions[0])[_type].fmeasure

        register_metric(metric=rouge_type, higher_is_better=True, output_type="generate_until", aggregation="mean")(
            score
        )


@pytest.fixture(scope="module", params=["llama", "qwen3_moe"])
def both_runs(request, tmp_path_factory):
    try:
        import accelerate  # noqa: F401 - lm-eval's HFLM imports it
    except ImportError:
        pytest.fail("accelerate is missing: install the dev extra (pip install -e '.[dev]'); lm-eval's HFLM needs it")
    import torch

    from evaluation.runner import evaluate
    from evaluation.tasks import load_tasks

    root = tmp_path_factory.mktemp(f"eval_{request.param}")
    task_dir = write_task_dir(root)
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as env:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "DISABLE_MULTIPROC"):  # offline; bootstrap in-process
            env.setenv(name, "1")
        env.setenv("TOKENIZERS_PARALLELISM", "false")
        torch.set_num_threads(1)  # a tiny model: threads only contend with each other on a shared machine
        try:
            import lm_eval
            from lm_eval.tasks import TaskManager

            lm = hflm(save_tiny_model(root / "model", request.param))
            _register_rouge_in_lm_eval()
            theirs = lm_eval.simple_evaluate(
                model=lm,
                tasks=TASKS,
                bootstrap_iters=BOOTSTRAP,
                log_samples=True,
                task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            )
            scorer = HFLMScorer(lm)
            ours = evaluate(load_tasks(TASKS, [task_dir]), scorer, log_samples=True, bootstrap_iters=BOOTSTRAP)
        finally:
            torch.set_num_threads(threads)
    return ours, theirs, scorer


def _close(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def test_every_metric_and_stderr_equals_lm_eval(both_runs):
    ours, theirs, _ = both_runs
    ours_json = ours.to_lm_eval_json()
    names = [
        "cloze",
        "cloze_gpl",
        "cloze_apache",
        "cloze_gpl2",
        "license_last_word",
        "license_ppl",
        "license_complete",
        "license_complete_any",
    ]
    compared = 0
    for name in names:
        mine, ref = ours_json["results"][name], theirs["results"][name]
        ref_metrics = {k for k in ref if "," in k}
        assert ref_metrics, name
        # everything lm-eval reports we report, with the same value; we add only bits_per_byte to multiple choice
        assert ref_metrics <= set(mine), (name, ref_metrics - set(mine))
        extra = {k for k in mine if "," in k} - ref_metrics
        assert extra <= {"bits_per_byte,none", "bits_per_byte_stderr,none"}, (name, extra)
        for key in ref_metrics:
            assert _close(mine[key], ref[key]), (name, key, mine[key], ref[key])
            compared += 1
        assert mine["sample_len"] == ref["sample_len"]
        assert mine["alias"] == ref["alias"]
    expected = {
        "acc",
        "acc_norm",
        "brier_score",
        "acc_mutual_info",
        "acc_bytes",
        "perplexity",
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
        "exact_match",
        "bleu",
        "chrf",
        "rouge1",
        "rouge2",
        "rougeL",
    }
    reported = {k.split(",")[0] for n in names for k in theirs["results"][n] if "," in k and "_stderr" not in k}
    assert expected <= reported
    assert (
        compared == 46
    )  # values and stderrs: 4 group, 6 + 6 + 6 multiple-choice, 4 last-word, 6 rolling, 14 generation
    assert ours_json["n-samples"] == {k: dict(v) for k, v in theirs["n-samples"].items()}
    assert ours_json["n-shot"] == theirs["n-shot"]
    assert ours_json["higher_is_better"] == theirs["higher_is_better"]
    assert ours_json["versions"] == theirs["versions"]
    assert ours_json["group_subtasks"] == theirs["group_subtasks"]


def test_rendered_requests_and_per_document_values_equal_lm_eval(both_runs):
    ours, theirs, _ = both_runs
    for name in [
        "cloze_gpl",
        "cloze_apache",
        "cloze_gpl2",
        "license_last_word",
        "license_ppl",
        "license_complete",
        "license_complete_any",
    ]:
        mine, ref = ours.samples[name], theirs["samples"][name]
        assert [s["doc_id"] for s in mine] == [s["doc_id"] for s in ref]
        for m, r in zip(mine, ref):
            ref_args = [list(a) for a in r["arguments"]]
            if name.startswith("license_complete"):  # (context, generation_kwargs): compare the context and the stops
                assert m["arguments"][0][0] == ref_args[0][0]
                assert m["arguments"][0][1]["until"] == ref_args[0][1]["until"]
                assert m["filtered_resps"] == r["filtered_resps"]
            else:
                assert m["arguments"] == ref_args
                assert m["prompt_hash"] == r["prompt_hash"] and m["target_hash"] == r["target_hash"]
            assert m["doc_hash"] == r["doc_hash"] and m["target"] == r["target"]
            for metric in r["metrics"]:
                assert _close_values(m[metric], r[metric]), (name, metric, m[metric], r[metric])


def _close_values(a, b) -> bool:
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_close_values(x, y) for x, y in zip(a, b))
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if hasattr(b, "tolist"):
        return _close_values(a, b.tolist())
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def test_multiple_choice_bits_per_byte_is_the_gold_continuations(both_runs):
    """lm-eval has no multiple-choice bits per byte; it is its bits_per_byte aggregation over the gold choices'
    log-likelihoods (from lm-eval's own logged responses) and the UTF-8 bytes of the scored continuation."""
    from lm_eval.api.metrics import bits_per_byte

    ours, theirs, _ = both_runs
    for name, delimiter in (("cloze_gpl", " "), ("cloze_apache", " ->")):
        pairs = []
        for sample in theirs["samples"][name]:
            gold = sample["doc"]["label"]
            ll = sample["resps"][gold][0][0]
            pairs.append((ll, len((delimiter + sample["doc"]["choices"][gold]).encode("utf-8"))))
        expected = bits_per_byte(pairs)
        got = ours.to_lm_eval_json()["results"][name]["bits_per_byte,none"]
        assert math.isclose(got, expected, rel_tol=1e-12), (name, got, expected)
        assert ours.to_lm_eval_json()["results"][name]["bits_per_byte_stderr,none"] == "N/A"


def test_rouge_and_bleu_equal_the_packages_called_directly(both_runs):
    import sacrebleu
    from rouge_score import rouge_scorer

    ours, _, _ = both_runs
    samples = ours.samples["license_complete"]
    refs = [s["target"] for s in samples]
    preds = [s["filtered_resps"][0] for s in samples]
    results = ours.to_lm_eval_json()["results"]["license_complete"]
    assert results["bleu,none"] == sacrebleu.corpus_bleu(preds, [refs]).score
    assert results["chrf,none"] == sacrebleu.corpus_chrf(preds, [refs]).score
    for rouge_type in ("rouge1", "rouge2", "rougeL"):
        scorer = rouge_scorer.RougeScorer([rouge_type])
        values = [scorer.score(r, p)[rouge_type].fmeasure for r, p in zip(refs, preds)]
        assert results[f"{rouge_type},none"] == sum(values) / len(values)
    assert any(p.strip() for p in preds)  # the model generated something to score


def test_identical_requests_are_scored_once(both_runs):
    ours, _, scorer = both_runs
    requested = sum(len(s["arguments"]) for name in LOGLIKELIHOOD_TASKS for s in ours.samples[name])
    unique = {tuple(a) for name in LOGLIKELIHOOD_TASKS for s in ours.samples[name] for a in s["arguments"]}
    assert scorer.calls["loglikelihood"] == len(unique) <= requested


def test_repeated_generation_requests_are_generated_once(both_runs):
    ours, _, scorer = both_runs
    contexts = [s["arguments"][0][0] for s in ours.samples["license_complete"]]
    assert contexts == [s["arguments"][0][0] for s in ours.samples["license_complete_any"]]
    assert scorer.calls["generate_until"] == len(set(contexts))
