"""LoomScorer against lm-eval 0.4.13's own HFLM on the model's Hugging Face export: the same requests give the same
per-request log-likelihoods (<= 1e-4) and is_greedy flags, the same rolling log-likelihoods and the same greedy
generations, for a Llama-style and a Mixtral-style (MoE) Loom run. The requests cover what HFLM's tokenisation
does differently from a plain encode: an empty context, trailing spaces, contexts longer than the model's 48
positions (left truncation), texts spanning several rolling windows, stop strings and max_gen_toks."""

from __future__ import annotations

import os

import pytest
from tiny_loom_runs import MAX_SEQ_LEN, cached_run, license_text, require_lm_eval_hf

from evaluation.requests import GenerationRequest, LoglikelihoodRequest, RollingRequest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOL = 1e-4


def text_requests():
    text = license_text("GPL-2", start=2000, chars=6000)
    sentences = [s.strip() for s in text.replace("\n", " ").split(".") if len(s.strip()) > 20][:12]
    loglikelihood = []
    for i, sentence in enumerate(sentences[:8]):
        words = sentence.split()
        cut = max(1, len(words) // 2)
        context, continuation = " ".join(words[:cut]), " " + " ".join(words[cut : cut + 3])
        loglikelihood.append(LoglikelihoodRequest(context, continuation))
        loglikelihood.append(LoglikelihoodRequest(context + " ", continuation.lstrip()))  # trailing space moved
    loglikelihood.append(LoglikelihoodRequest("", "The licenses for most software"))  # empty context: prefix token
    long_context = " ".join(sentences[:6])  # far more than MAX_SEQ_LEN tokens: left-truncated
    loglikelihood.append(LoglikelihoodRequest(long_context, " is free software"))
    loglikelihood.append(LoglikelihoodRequest("Copyright", " (C)"))
    rolling = [
        RollingRequest(sentences[0]),
        RollingRequest(" ".join(sentences[:5])),
        RollingRequest(text[: MAX_SEQ_LEN * 6]),
    ]
    generation = [GenerationRequest(sentences[i], ("\n", "."), 12) for i in range(3)]
    generation += [
        GenerationRequest(sentences[3], (" ",), 12),
        GenerationRequest(sentences[4], (), 7),
        GenerationRequest(long_context, ("the", "e "), 16),
        GenerationRequest("This", ("\n\n",), 12),
    ]
    return loglikelihood, rolling, generation


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: toy models gain nothing from more, and the CI box is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hflm(hf_dir):
    require_lm_eval_hf()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=1)
    assert lm.max_length == MAX_SEQ_LEN
    return lm


def hflm_loglikelihood(lm, requests):
    from lm_eval.api.instance import Instance

    return lm.loglikelihood(
        [Instance("loglikelihood", {}, (r.context, r.continuation), i) for i, r in enumerate(requests)],
        disable_tqdm=True,
    )


def hflm_rolling(lm, requests):
    from lm_eval.api.instance import Instance

    return lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (r.text,), i) for i, r in enumerate(requests)], disable_tqdm=True
    )


def hflm_generate(lm, requests):
    from lm_eval.api.instance import Instance

    return lm.generate_until(
        [
            Instance(
                "generate_until",
                {},
                (r.context, {"until": list(r.until), "do_sample": False, "max_gen_toks": r.max_gen_toks}),
                i,
            )
            for i, r in enumerate(requests)
        ],
        disable_tqdm=True,
    )


@pytest.mark.parametrize("family", ["llama", "mixtral"])
def test_scorer_equals_lm_eval_hflm_on_the_export(family):
    from evaluation.loom_scorer import LoomScorer

    run, hf_dir = cached_run(family)
    loglikelihood, rolling, generation = text_requests()
    lm = hflm(hf_dir)
    ref_gen = hflm_generate(lm, generation)
    assert sum(1 for g in ref_gen if g) >= 3, ref_gen  # the generations compare text, not empty strings
    # The model's own greedy continuations: is_greedy must come out true for (most of) these.
    loglikelihood += [LoglikelihoodRequest(r.context, g) for r, g in zip(generation, ref_gen) if g]
    ref_ll, ref_roll = hflm_loglikelihood(lm, loglikelihood), hflm_rolling(lm, rolling)
    assert any(g for _, g in ref_ll) and not all(g for _, g in ref_ll)

    for path in (run, hf_dir):  # the run directory and its export score alike
        scorer = LoomScorer.load(path, batch_size=3)
        ll = scorer.loglikelihood(loglikelihood)
        ll_diff = max(abs(a - b) for (a, _), (b, _) in zip(ll, ref_ll))
        assert ll_diff <= TOL, ll_diff
        assert [g for _, g in ll] == [g for _, g in ref_ll]
        roll = scorer.loglikelihood_rolling(rolling)
        roll_diff = max(abs(a - b) for a, b in zip(roll, ref_roll))
        assert roll_diff <= TOL, roll_diff
        assert scorer.generate_until(generation) == ref_gen
        print(
            f"{family} {path.name}: {len(ll)} loglikelihoods max |diff| {ll_diff:.2e}, {len(roll)} rolling "
            f"max |diff| {roll_diff:.2e}, {len(ref_gen)} generations equal"
        )


def test_results_do_not_depend_on_batch_size():
    from evaluation.loom_scorer import LoomScorer

    run, _ = cached_run("llama")
    loglikelihood, rolling, generation = text_requests()
    one, five = LoomScorer.load(run, batch_size=1), LoomScorer.load(run, batch_size=5)
    a, b = one.loglikelihood(loglikelihood), five.loglikelihood(loglikelihood)
    assert max(abs(x - y) for (x, _), (y, _) in zip(a, b)) <= 1e-5
    assert [g for _, g in a] == [g for _, g in b]
    assert (
        max(abs(x - y) for x, y in zip(one.loglikelihood_rolling(rolling), five.loglikelihood_rolling(rolling))) <= 1e-4
    )
    assert one.generate_until(generation) == five.generate_until(generation)
    empty_context = one.generate_until([GenerationRequest("", ("\n",), 5)])[0]  # generated after the prefix token
    assert empty_context == one.generate_until([GenerationRequest("<|endoftext|>", ("\n",), 5)])[0]


def test_a_document_masked_model_scores_as_its_export_does(tmp_path):
    """A run trained with document masks (model.document_mask_eos_id) would, by default, hide the prefix EOS from
    the context; the scorer attends across it as the exported HF model (and so HFLM) does."""
    import dataclasses
    import shutil

    import torch

    from evaluation.loom_scorer import LoomScorer
    from model.checkpoint_io import (
        load_model_checkpoint,
        save_model_checkpoint,
        step_dir_name,
    )

    run, _ = cached_run("llama")
    state, cfg = load_model_checkpoint(run)
    plain = LoomScorer.load(run, batch_size=2)
    eos = plain.rules.eos_id
    masked_run = tmp_path / "masked"
    save_model_checkpoint(
        state, dataclasses.replace(cfg, document_mask_eos_id=eos), masked_run / "checkpoints" / step_dir_name(1), step=1
    )
    shutil.copyfile(run / "tokenizer.json", masked_run / "tokenizer.json")
    masked = LoomScorer.load(masked_run, batch_size=2)
    requests = [
        LoglikelihoodRequest("", "This License applies to any program"),
        LoglikelihoodRequest("", "Copyright (C) 1989"),
    ]
    tokens = torch.tensor([[eos, *plain.rules.encode("This License applies")]])
    with torch.no_grad():  # the document mask does change a plain forward over the prefix EOS ...
        assert (masked.model(tokens) - plain.model(tokens)).abs().max() > 1e-3
    for (a, greedy_a), (b, greedy_b) in zip(masked.loglikelihood(requests), plain.loglikelihood(requests)):
        assert abs(a - b) <= 1e-5 and greedy_a == greedy_b  # ... but not the scores
