"""The Scorer (evaluation/requests.py) over a Loom model: log-likelihoods, rolling log-likelihoods and greedy
generations equal to lm-evaluation-harness 0.4.13's HFLM on the model's Hugging Face export.

Token ids follow HFLM (evaluation/token_requests.py). Log-likelihood inputs are (context + continuation) minus the
last token, left-truncated to max_length; batches are sorted longest first and right-padded, so in a causal model
padding never reaches a scored position and a result does not depend on its batch. Generation runs
`model.generation.generate` greedily through the KV cache on left-padded prompts, each row ending at the EOS token
or once its decoded text holds a stop string; the text is then cut at the first stop string. Results come back in
the requests' order.

`TokenScorer` holds all of that but the forward; `LoomScorer` runs a loaded plain model. The training loop's scorer
(launcher/callbacks/downstream_eval.py) subclasses `TokenScorer` with the train module's forward under its layout,
so in-loop and offline numbers come from the same tokenisation, batching and log-probability extraction.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from evaluation.requests import GenerationRequest, LoglikelihoodRequest, RollingRequest
from evaluation.token_requests import TokenRules, cut_at_stops, rolling_windows


class TokenScorer:
    """The Scorer contract over token ids: tokenisation (HFLM's), length-sorted padded batches, rolling windows and
    greedy generation. Subclasses give `_score_batch` (the forward of one padded batch) and `generation_model` (or
    their own `_generate`, the greedy decoding of one batch of prompts).

    max_length: the longest sequence a forward sees (HFLM: config.json's max_position_embeddings, which a Loom
    export writes from model.max_seq_len)."""

    generation_model: Any = None  # the plain model `generate_until` decodes with

    def __init__(
        self,
        rules: TokenRules,
        *,
        max_length: int,
        batch_size: int = 1,
        pad_id: int = 0,
        stop_ids: Sequence[int] = (),
    ):
        if batch_size < 1:
            raise ValueError(f"eval batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.rules = rules
        self.max_length = max_length
        self.batch_size = batch_size
        self.pad_id = pad_id
        # Generation ends at any end-of-sequence id of the model's generation config, as HF generate does.
        self.stop_ids = list(dict.fromkeys([rules.eos_id, *stop_ids]))

    # ------------------------------------------------------------------------------------------ Scorer
    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[tuple[float, bool]]:
        pairs = [self.rules.context_continuation(r.context, r.continuation) for r in requests]
        return self.score_tokens(pairs)

    def loglikelihood_rolling(self, requests: list[RollingRequest]) -> list[float]:
        windows, owners = [], []
        for index, request in enumerate(requests):
            for window in rolling_windows(self.rules.encode(request.text), self.rules.prefix_id, self.max_length):
                windows.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.score_tokens(windows)):
            totals[owner] += logprob
        return totals

    def generate_until(self, requests: list[GenerationRequest]) -> list[str]:
        prompts = [self.rules.generation_prompt(r.context, self.max_length, r.max_gen_toks) for r in requests]
        stops = [self.rules.stop_strings(r.until) for r in requests]
        results: list[str] = [""] * len(requests)
        # One max_gen_toks per generate() call; longest prompts first, as HFLM orders them.
        order = sorted(range(len(requests)), key=lambda i: (requests[i].max_gen_toks, -len(prompts[i])))
        for batch in self._batches(order, key=lambda i: requests[i].max_gen_toks):
            batch_stops = [stops[i] for i in batch]

            def reached_stop(rows: list[list[int]], batch_stops=batch_stops) -> list[bool]:
                return [
                    any(s and s in self.rules.decode(row) for s in row_stops)
                    for row, row_stops in zip(rows, batch_stops)
                ]

            new_tokens = self._generate([prompts[i] for i in batch], requests[batch[0]].max_gen_toks, reached_stop)
            for i, tokens in zip(batch, new_tokens):
                results[i] = cut_at_stops(self.rules.decode(tokens), stops[i])
        return results

    def generation_batch_count(self, requests: list[GenerationRequest]) -> int:
        """How many `_generate` calls `generate_until(requests)` makes: batches of batch_size requests of one
        max_gen_toks each."""
        per_length: dict[int, int] = {}
        for request in requests:
            per_length[request.max_gen_toks] = per_length.get(request.max_gen_toks, 0) + 1
        return sum(-(-count // self.batch_size) for count in per_length.values())

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, stop_when) -> list[list[int]]:
        """Greedy new tokens of each prompt (one batch), ended at a stop id, once `stop_when` says so or after
        max_new_tokens: `model.generation.generate` through the KV cache of `generation_model`."""
        from model.generation import generate

        return generate(
            self.generation_model,
            prompts,
            max_new_tokens,
            greedy=True,
            stop_tokens=self.stop_ids,
            pad_id=self.pad_id,
            stop_when=stop_when,
        )

    # ------------------------------------------------------------------------------------------ token level
    @torch.no_grad()
    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log P(continuation token), every continuation token the argmax) for (context ids, continuation
        ids) pairs, the input left-truncated to max_length tokens."""
        for context, continuation in pairs:
            if not context or not continuation:
                raise ValueError("every scored pair needs at least one context and one continuation token")
            if len(continuation) > self.max_length:
                raise ValueError(
                    f"a continuation of {len(continuation)} tokens is longer than max_length={self.max_length}"
                )
        sequences = [(c + x)[-(self.max_length + 1) :] for c, x in pairs]
        order = sorted(range(len(pairs)), key=lambda i: (-len(sequences[i]), tuple(sequences[i][:-1])))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for batch in self._batches(order):
            width = len(sequences[batch[0]]) - 1
            tokens = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            targets = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            for row, i in enumerate(batch):
                tokens[row, : len(sequences[i]) - 1] = torch.tensor(sequences[i][:-1], dtype=torch.long)
                targets[row, : len(sequences[i]) - 1] = torch.tensor(sequences[i][1:], dtype=torch.long)
            spans = [(len(sequences[i]) - 1 - len(pairs[i][1]), len(sequences[i]) - 1) for i in batch]
            for i, result in zip(batch, self._score_batch(tokens, targets, spans)):
                results[i] = result
        return results

    def _score_batch(
        self, tokens: torch.Tensor, targets: torch.Tensor, spans: list[tuple[int, int]]
    ) -> list[tuple[float, bool]]:
        """(sum of log P(targets[row, start:end]) given tokens[row, :end], all of them the argmax) for each row's
        span (start, end); rows are right-padded, so padding never reaches a scored position of a causal model."""
        raise NotImplementedError

    def _batches(self, order: list[int], key=None):
        """Consecutive runs of at most batch_size indices of `order` (and of one `key` value)."""
        batch: list[int] = []
        for index in order:
            if batch and (len(batch) == self.batch_size or (key is not None and key(index) != key(batch[0]))):
                yield batch
                batch = []
            batch.append(index)
        if batch:
            yield batch


class LoomScorer(TokenScorer):
    """Answers evaluation requests with a loaded Loom `Transformer` (eval mode) and its tokenizer."""

    def __init__(
        self,
        model: Any,
        rules: TokenRules,
        *,
        max_length: int,
        batch_size: int = 1,
        pad_id: int = 0,
        stop_ids: Sequence[int] = (),
    ):
        super().__init__(rules, max_length=max_length, batch_size=batch_size, pad_id=pad_id, stop_ids=stop_ids)
        self.model = model.eval()
        self.generation_model = self.model
        self.device = next(model.parameters()).device
        # A model trained with document masks would not let the context see the prefix EOS; HF exports (and so
        # HFLM) attend across it. A padding mask of ones selects the plain causal path.
        self._plain_causal_mask = getattr(model.cfg, "document_mask_eos_id", None) is not None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        batch_size: int = 1,
        dtype: str = "fp32",
        device: str = "cpu",
        max_length: int | None = None,
    ) -> LoomScorer:
        """The scorer of a Loom run directory, checkpoint or Hugging Face model directory with its tokenizer."""
        from model.hf.files import special_tokens
        from model.loading import load_model

        loaded = load_model(path, dtype=dtype, device=device)
        if loaded.tokenizer is None:
            raise ValueError(
                f"{path}: no tokenizer.json beside the model (checkpoint, run or HF directory); "
                f"evaluation needs the tokenizer the model was trained with"
            )
        specials = special_tokens(loaded.tokenizer_dir)
        eos = specials.eos[1] if specials.eos is not None else (loaded.stop_ids[0] if loaded.stop_ids else None)
        if eos is None:
            raise ValueError(
                f"{loaded.tokenizer_dir}: the tokenizer names no end-of-sequence token "
                f"(tokenizer_config.json eos_token, or generation_config.json eos_token_id); "
                f"evaluation needs one (end of generation; the scoring prefix without a BOS token)"
            )
        rules = TokenRules(loaded.tokenizer, eos_id=eos, bos_id=specials.bos[1] if specials.bos else None)
        return cls(
            loaded.model,
            rules,
            max_length=max_length or loaded.model.cfg.max_seq_len,
            batch_size=batch_size,
            pad_id=loaded.pad_id,
            stop_ids=loaded.stop_ids,
        )

    @torch.no_grad()
    def _score_batch(
        self, tokens: torch.Tensor, targets: torch.Tensor, spans: list[tuple[int, int]]
    ) -> list[tuple[float, bool]]:
        tokens = tokens.to(self.device)
        mask = torch.ones_like(tokens, dtype=torch.bool) if self._plain_causal_mask else None
        hidden = self.model(tokens, attention_mask=mask, hidden_states=True)  # the head on scored rows only
        results = []
        for row, (start, end) in enumerate(spans):
            log_probs = torch.log_softmax(self.model.logits(hidden[row, start:end]).float(), dim=-1)
            target = targets[row, start:end].to(log_probs.device)
            greedy = bool((log_probs.argmax(dim=-1) == target).all())
            results.append((float(log_probs.gather(-1, target[:, None]).sum()), greedy))
        return results
