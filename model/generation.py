"""Autoregressive generation with a static KV cache: greedy, sampling (temperature, top-k, top-p) and beam search.

Prompts of different lengths are left-padded into one batch: every row then writes its next token into the same
cache slot, an attention mask hides the padding, and per-row positions keep RoPE/learned positions as if each
prompt were alone. One prefill over the padded prompts fills the cache; each decode step feeds one token per row.
Beam search is written here rather than borrowed from `transformers` because that needs an HF model class.

LongRoPE picks its short or long frequencies by the length of a forward, so keys cached with the short ones go
stale once a sequence grows past the original context: at that step the whole sequence is run again into fresh
caches (what transformers does for Phi-3). `python -m model.generate` is the command line (model/generate.py).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from model.blocks.kv_cache import KVCache
from model.config import MAX_SEQ_LEN_BOUNDED

__all__ = ["KVCache", "generate", "make_kv_caches", "filter_logits", "sample_next"]


def _rerun_length(model: nn.Module) -> Optional[int]:
    """The total length at which cached keys must be recomputed (LongRoPE switching to its long factors)."""
    s = model.cfg.rope_scaling
    return s.original_max_seq_len + 1 if s.type == "longrope" and not s.is_plain else None


def _next_logits(model, next_token, step, lengths, cache, mask, prompt_tokens, generated):
    """Last-position logits after feeding `next_token` (the step-th new token of each row); the whole sequence
    again into fresh caches at the step LongRoPE switches factors."""
    total = prompt_tokens.shape[1] + step + 1
    if total == _rerun_length(model):
        tokens = torch.cat([prompt_tokens, generated], dim=1)
        positions = torch.clamp(mask[:, :total].long().cumsum(-1) - 1, min=0)
        for name, fresh in make_kv_caches(model, tokens.shape[0], mask.shape[1]).items():
            cache[name] = fresh
        return model(tokens, positions=positions, cache=cache, attention_mask=mask)[:, -1]
    return model(next_token[:, None], positions=(lengths + step)[:, None], cache=cache, attention_mask=mask)[:, -1]


def make_kv_caches(model: nn.Module, batch_size: int, max_len: int) -> dict:
    """One preallocated cache per layer of `model` (KVCache, or LatentKVCache for latent attention), in its
    parameter dtype and device."""
    return model.new_caches(batch_size, max_len)


def filter_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None
) -> torch.Tensor:
    """fp32 logits / temperature with tokens outside the top-k, then outside the top-p nucleus, set to -inf
    (the order and rules of HF's TopK/TopP warpers; the most probable token always survives)."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Next token [B] from last-position logits [B, V]."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, total_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> tokens [B, P], attention mask over all total_len slots [B, total_len] (False on padding), prompt
    positions [B, P], prompt lengths [B]."""
    longest = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.ones(len(prompts), total_len, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        pad = longest - len(prompt)
        tokens[row, pad:] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, :pad] = False
    positions = torch.clamp(mask[:, :longest].long().cumsum(-1) - 1, min=0)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    return tokens.to(device), mask.to(device), positions.to(device), lengths.to(device)


def _check_args(model, prompts, max_new_tokens, temperature, top_k, top_p, greedy, num_beams) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate() needs at least one prompt and every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    vocab = model.cfg.vocab_size
    for p in prompts:
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab}), got {min(p)}..{max(p)}")
    needed = max(len(p) for p in prompts) + max_new_tokens
    if model.cfg.pos_embedding in MAX_SEQ_LEN_BOUNDED and needed > model.cfg.max_seq_len:
        raise ValueError(
            f"longest prompt + max_new_tokens = {needed} exceeds model.max_seq_len={model.cfg.max_seq_len}"
        )
    if not greedy and num_beams == 1 and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (use greedy=True for argmax), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and (top_k is not None or top_p is not None):
        raise ValueError("beam search is deterministic: top_k/top_p apply only with num_beams=1")


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    greedy: bool = False,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    stop_tokens: Sequence[int] = (),
    pad_id: int = 0,
    generator: Optional[torch.Generator] = None,
    stop_when: Optional[Callable[[list[list[int]]], list[bool]]] = None,
) -> list[list[int]]:
    """New tokens for each prompt, each row ended at its first stop token (included) or after max_new_tokens.

    num_beams > 1 runs beam search on log-probabilities, ranking finished beams by sum(log p) / length **
    length_penalty (length = generated tokens). `stop_when(new tokens of each row so far)` -> which rows are done
    (e.g. a stop string decoded, as the evaluator's generate_until asks) ends those rows after their last token,
    as a stop token would; without beams only."""
    _check_args(model, prompts, max_new_tokens, temperature, top_k, top_p, greedy, num_beams)
    if stop_when is not None and num_beams > 1:
        raise ValueError("stop_when applies to greedy decoding and sampling, not to beam search (num_beams > 1)")
    was_training = model.training
    model.eval()
    try:
        if num_beams > 1:
            return _beam_search(model, prompts, max_new_tokens, num_beams, length_penalty, stop_tokens, pad_id)
        return _sample(
            model, prompts, max_new_tokens, temperature, top_k, top_p, greedy, stop_tokens, pad_id, generator, stop_when
        )
    finally:
        model.train(was_training)


def _sample(
    model, prompts, max_new_tokens, temperature, top_k, top_p, greedy, stop_tokens, pad_id, generator, stop_when=None
):
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    tokens, mask, positions, lengths = _left_pad(prompts, pad_id, longest + max_new_tokens, device)
    cache = make_kv_caches(model, len(prompts), longest + max_new_tokens)
    logits = model(tokens, positions=positions, cache=cache, attention_mask=mask)[:, -1]
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    steps = []
    outputs: list[list[int]] = [[] for _ in prompts]  # each row's new tokens, up to the step it finished
    for step in range(max_new_tokens):
        next_token = sample_next(
            logits, greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
        )
        next_token = torch.where(finished, torch.full_like(next_token, pad_id), next_token)
        steps.append(next_token)
        for row, (tok, done) in enumerate(zip(next_token.tolist(), finished.tolist())):
            if not done:
                outputs[row].append(tok)
        finished |= torch.isin(next_token, stops)
        if stop_when is not None:
            finished |= torch.tensor(stop_when(outputs), dtype=torch.bool, device=device)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        generated = torch.stack(steps, dim=1)
        logits = _next_logits(model, next_token, step, lengths, cache, mask, tokens, generated)
    return outputs


def _beam_search(model, prompts, max_new_tokens, num_beams, length_penalty, stop_tokens, pad_id):
    device = next(model.parameters()).device
    n_prompts, n_rows = len(prompts), len(prompts) * num_beams
    rows = [p for p in prompts for _ in range(num_beams)]
    longest = max(len(p) for p in prompts)
    tokens, mask, positions, lengths = _left_pad(rows, pad_id, longest + max_new_tokens, device)
    cache = make_kv_caches(model, n_rows, longest + max_new_tokens)
    logits = model(tokens, positions=positions, cache=cache, attention_mask=mask)[:, -1]
    stops = set(stop_tokens)
    # Only beam 0 of each prompt is live at the start, so the first step does not pick the same token num_beams times.
    beam_scores = torch.full((n_prompts, num_beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    generated = torch.empty(n_rows, 0, dtype=torch.long, device=device)
    finished_hyps: list[list[tuple[float, list[int]]]] = [[] for _ in prompts]
    done = [False] * n_prompts
    for step in range(max_new_tokens):
        length = step + 1
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        candidates = (beam_scores.reshape(-1, 1) + log_probs).reshape(n_prompts, num_beams * vocab)
        top_scores, top_ids = torch.topk(candidates, min(2 * num_beams, num_beams * vocab), dim=1)
        new_scores, new_rows, new_tokens = [], [], []
        for b in range(n_prompts):
            if done[b]:  # keep feeding padding; these rows no longer matter
                new_scores += [float("-inf")] * num_beams
                new_rows += [b * num_beams + i for i in range(num_beams)]
                new_tokens += [pad_id] * num_beams
                continue
            kept = []
            for rank, (score, idx) in enumerate(zip(top_scores[b].tolist(), top_ids[b].tolist())):
                source, token = divmod(idx, vocab)
                if score == float("-inf"):
                    break
                if token in stops:
                    if rank < num_beams:
                        sequence = generated[b * num_beams + source].tolist() + [token]
                        finished_hyps[b].append((score / length**length_penalty, sequence))
                    continue
                kept.append((score, b * num_beams + source, token))
                if len(kept) == num_beams:
                    break
            while len(kept) < num_beams:  # fewer live candidates than beams (tiny vocab, first step)
                kept.append((float("-inf"), b * num_beams, pad_id))
            finished_hyps[b] = sorted(finished_hyps[b], key=lambda h: h[0], reverse=True)[:num_beams]
            best_running = kept[0][0] / length**length_penalty
            if len(finished_hyps[b]) == num_beams and finished_hyps[b][-1][0] >= best_running:
                done[b] = True
            for score, row, token in kept:
                new_scores.append(score)
                new_rows.append(row)
                new_tokens.append(token)
        beam_scores = torch.tensor(new_scores, device=device).reshape(n_prompts, num_beams)
        reorder = torch.tensor(new_rows, dtype=torch.long, device=device)
        next_token = torch.tensor(new_tokens, dtype=torch.long, device=device)
        generated = torch.cat([generated[reorder], next_token[:, None]], dim=1)
        for layer_cache in cache.values():
            layer_cache.reorder(reorder)
        if all(done) or step == max_new_tokens - 1:
            break
        logits = _next_logits(model, next_token, step, lengths, cache, mask, tokens, generated)
    results = []
    for b in range(n_prompts):
        hyps = list(finished_hyps[b])
        if not done[b]:
            length = generated.shape[1]
            for i in range(num_beams):
                score = float(beam_scores[b, i])
                if score > float("-inf"):
                    hyps.append((score / length**length_penalty, generated[b * num_beams + i].tolist()))
        results.append(max(hyps, key=lambda h: h[0])[1])
    return results
