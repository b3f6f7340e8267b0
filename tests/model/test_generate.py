"""Generation: the KV-cache path equals uncached recomputation (greedy, fp32) for batched prompts of different
lengths and for sliding windows; sampling respects top-k/top-p; stop tokens; beam search finds the optimum."""

import itertools

import pytest
import torch

from model import build
from model.config import ModelConfig
from model.generation import filter_logits, generate

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = dict(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, multiple_of=16)


def make(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(ModelConfig(**{**SMALL, **overrides}))
    with torch.no_grad():  # a peaky random model, so greedy choices are far from ties
        model.output.weight.mul_(20)
    return model.eval()


def uncached_greedy(model, prompt: list[int], n: int) -> list[int]:
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            sequence.append(int(model(torch.tensor([sequence]))[0, -1].argmax()))
    return sequence[len(prompt) :]


PROMPTS = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11, 12, 13, 14]]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(sliding_window=4),
        dict(pos_embedding="alibi", attn_logit_softcap=5.0),
        dict(pos_embedding="learned", norm_type="layernorm", mlp_type="gelu", tie_embeddings=True),
        dict(moe=dict(num_experts=4, top_k=2)),
    ],
    ids=["llama", "sliding_window", "alibi_softcap", "gpt2", "moe"],
)
def test_cached_batched_greedy_equals_uncached_recomputation(overrides):
    model = make(**overrides)
    out = generate(model, PROMPTS, 10, greedy=True)
    for prompt, new_tokens in zip(PROMPTS, out):
        assert new_tokens == uncached_greedy(model, prompt, 10)


def test_stop_tokens_end_each_row_at_its_first_stop_inclusive():
    model = make()
    free = generate(model, PROMPTS, 10, greedy=True)
    stop = free[0][3]
    cut = free[0].index(stop) + 1
    out = generate(model, PROMPTS, 10, greedy=True, stop_tokens=(stop,))
    assert out[0] == free[0][:cut]
    for row_free, row in zip(free, out):
        expected = row_free[: row_free.index(stop) + 1] if stop in row_free else row_free
        assert row == expected


def test_stop_when_ends_rows_the_caller_says_are_done_and_the_batch_once_all_are():
    model = make()
    free = generate(model, PROMPTS, 10, greedy=True)
    lengths = [2, 5, 10, 1]  # row i is done once it holds lengths[i] tokens
    seen = []

    def done(rows: list[list[int]]) -> list[bool]:
        seen.append([len(r) for r in rows])
        return [len(r) >= n for r, n in zip(rows, lengths)]

    out = generate(model, PROMPTS, 10, greedy=True, stop_when=done)
    assert out == [row[:n] for row, n in zip(free, lengths)]
    assert seen[-1] == [2, 5, 10, 1]  # finished rows stop growing; the last call is the one that ends the batch
    out = generate(model, PROMPTS, 10, greedy=True, stop_when=lambda rows: [len(r) >= 3 for r in rows])
    assert out == [row[:3] for row in free]
    with pytest.raises(ValueError, match="stop_when"):
        generate(model, PROMPTS, 10, num_beams=2, stop_when=done)


def nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    """Smallest set of most probable tokens whose mass reaches top_p (the definition, not the implementation)."""
    order = torch.argsort(probs, descending=True).tolist()
    chosen, mass = set(), 0.0
    for token in order:
        chosen.add(token)
        mass += float(probs[token])
        if mass >= top_p:
            break
    return chosen


def test_filter_logits_keeps_exactly_the_allowed_sets():
    torch.manual_seed(1)
    logits = torch.randn(20, 61) * 3
    kept = filter_logits(logits, top_k=5)
    for row in range(20):
        assert set(torch.nonzero(kept[row] > float("-inf")).flatten().tolist()) == set(
            torch.topk(logits[row], 5).indices.tolist()
        )
    kept = filter_logits(logits, top_p=0.8, temperature=0.7)
    for row in range(20):
        allowed = nucleus(torch.softmax(logits[row] / 0.7, -1), 0.8)
        assert set(torch.nonzero(kept[row] > float("-inf")).flatten().tolist()) == allowed
    kept = filter_logits(logits, top_k=10, top_p=0.5)  # top-k first, then the nucleus of what is left
    for row in range(20):
        top10 = torch.topk(logits[row], 10).indices
        renormalised = torch.full((61,), 0.0)
        renormalised[top10] = torch.softmax(logits[row][top10], -1)
        assert set(torch.nonzero(kept[row] > float("-inf")).flatten().tolist()) == nucleus(renormalised, 0.5)


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.6), (8, 0.7)])
def test_sampling_never_leaves_the_allowed_set(top_k, top_p):
    model = make()
    with torch.no_grad():
        model.output.weight.div_(20)  # flatter distribution: sampling has real choices
    generator = torch.Generator().manual_seed(0)
    outputs = generate(model, PROMPTS * 3, 6, top_k=top_k, top_p=top_p, temperature=1.3, generator=generator)
    for prompt, new_tokens in zip(PROMPTS * 3, outputs):
        with torch.no_grad():  # one causal forward gives the logits before every generated token
            all_logits = model(torch.tensor([prompt + new_tokens]))[0].double() / 1.3
        for i, token in enumerate(new_tokens):
            logits = all_logits[len(prompt) - 1 + i]
            allowed = set(range(61))
            if top_k is not None:
                allowed = set(torch.topk(logits, top_k).indices.tolist())
            if top_p is not None:
                masked = torch.full_like(logits, float("-inf"))
                idx = torch.tensor(sorted(allowed))
                masked[idx] = logits[idx]
                allowed = nucleus(torch.softmax(masked, -1), top_p)
            assert token in allowed
    assert len({tuple(o) for o in outputs}) > 1  # it really sampled


def test_sampling_is_reproducible_with_a_generator():
    model = make()
    a = generate(model, PROMPTS, 5, top_k=20, generator=torch.Generator().manual_seed(3))
    b = generate(model, PROMPTS, 5, top_k=20, generator=torch.Generator().manual_seed(3))
    assert a == b


def sequence_log_probs(model, prompt, continuations: list[list[int]]) -> torch.Tensor:
    """log p(continuation | prompt) for each continuation (all the same length), in one batched forward."""
    batch = torch.tensor([prompt + list(c) for c in continuations])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(batch).double(), -1)
    n = len(continuations[0])
    targets = batch[:, len(prompt) :]
    return log_probs[:, len(prompt) - 1 : len(prompt) - 1 + n].gather(-1, targets[..., None]).squeeze(-1).sum(-1)


def test_beam_search_with_enough_beams_finds_the_exact_optimum():
    model = make(vocab_size=5)
    with torch.no_grad():
        model.output.weight.div_(20)
    prompts = [[1, 2], [3], [4, 0, 2]]
    # 25 = 5^2 beams keep every 2-token prefix, so the 3-token search is exhaustive.
    out = generate(model, prompts, 3, num_beams=25, length_penalty=0.0)
    everything = [list(c) for c in itertools.product(range(5), repeat=3)]
    for prompt, best in zip(prompts, out):
        scores = sequence_log_probs(model, prompt, everything)
        assert best == everything[int(scores.argmax())]
    greedy = generate(model, prompts, 3, greedy=True)
    for prompt, beam, greedy_row in zip(prompts, out, greedy):
        beam_score, greedy_score = sequence_log_probs(model, prompt, [beam, greedy_row]).tolist()
        assert beam_score >= greedy_score - 1e-9


def test_beam_search_with_one_beam_is_greedy_and_stops_at_stop_tokens():
    model = make()
    greedy = generate(model, PROMPTS, 8, greedy=True)
    assert generate(model, PROMPTS, 8, num_beams=1, greedy=True) == greedy
    stop = greedy[2][2]
    beams = generate(model, PROMPTS, 8, num_beams=3, stop_tokens=(stop,), length_penalty=1.0)
    for row in beams:
        assert 1 <= len(row) <= 8
        assert stop not in row[:-1]
    alone = [generate(model, [p], 8, num_beams=3, stop_tokens=(stop,))[0] for p in PROMPTS]
    assert beams == alone  # batching (left padding, per-row positions) does not change the search


def test_bad_arguments_fail_early():
    model = make()
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 60], 10, greedy=True)
    with pytest.raises(ValueError, match="prompt token ids"):
        generate(model, [[100]], 3, greedy=True)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [[1]], 3, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [[1]], 3, top_p=1.5)
