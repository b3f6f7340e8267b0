"""Requests turned into token ids exactly as lm-evaluation-harness 0.4.13's HFLM turns them (torch-free).

- log-likelihood: context and continuation are encoded whole and the continuation's tokens split off the end (so a
  word that merges across the boundary is scored as the tokenizer sees it); trailing spaces of the context move onto
  the continuation; an empty context becomes the prefix token (BOS, else EOS), unless the continuation already
  starts with it. A text already starting with the prefix token's text is encoded without special tokens.
- rolling log-likelihood: the text's tokens cut into disjoint windows of at most `max_length` predicted tokens,
  the first conditioned on the prefix token, each later one on the `max_length` tokens before it
  (`lm_eval.utils.get_rolling_token_windows` with context_len 1, then `make_disjoint_window`).
- generation: the context left-truncated to `max_length - max_gen_toks` tokens; the decoded continuation (special
  tokens skipped) cut before the first stop string, the EOS text counting as one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class TokenRules:
    """A `tokenizers.Tokenizer` with the special tokens lm-eval's HFLM reads from the tokenizer's HF config."""

    tokenizer: Any  # tokenizers.Tokenizer
    eos_id: int
    bos_id: int | None = None

    @property
    def prefix_id(self) -> int:
        """The token an empty context and the first rolling window are conditioned on: BOS, else EOS."""
        return self.bos_id if self.bos_id is not None else self.eos_id

    def token_text(self, token_id: int | None) -> str | None:
        if token_id is None:
            return None
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def encode(self, text: str, add_special_tokens: bool | None = None, *, prefix_text: str | None = None) -> list[int]:
        """Token ids of `text`; add_special_tokens None: the tokenizer's own post-processing, skipped when the text
        already starts with `prefix_text` (default: the prefix token's text)."""
        if add_special_tokens is None:
            prefix_text = self.token_text(self.prefix_id) if prefix_text is None else prefix_text
            add_special_tokens = not (prefix_text and text.startswith(prefix_text))
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def context_continuation(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of one log-likelihood request."""
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError(
                    "a log-likelihood request with an empty context and an empty continuation scores nothing"
                )
            return ([self.prefix_id], cont) if cont[0] != self.prefix_id else (cont[:1], cont[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids) :]

    def generation_prompt(self, context: str, max_length: int, max_gen_toks: int) -> list[int]:
        """The context's ids, left-truncated so that max_gen_toks new tokens fit in max_length (HFLM checks for
        a leading BOS text, not the EOS fallback, before adding special tokens)."""
        if max_gen_toks >= max_length:
            raise ValueError(
                f"max_gen_toks={max_gen_toks} leaves no room for a context in the model's max_length={max_length}"
            )
        ids = self.encode(context, prefix_text=self.token_text(self.bos_id) or "")
        if not ids:  # an empty context: generate after the prefix token (HF generate cannot start from nothing)
            ids = [self.prefix_id]
        return ids[-(max_length - max_gen_toks) :]

    def stop_strings(self, until: Sequence[str]) -> list[str]:
        """The request's stop strings plus the EOS token's text (lm-eval's handle_stop_sequences)."""
        stops = list(until)
        eos = self.token_text(self.eos_id)
        if eos is not None and eos not in stops:
            stops.append(eos)
        return stops


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Disjoint (context, predicted) windows covering every token of `tokens` once."""
    tokens = list(tokens)
    windows = []
    first = min(max_length, len(tokens))
    if tokens:
        windows.append(([prefix_id] + tokens[: first - 1], tokens[:first]))
    done = first
    while done < len(tokens):
        n_pred = min(len(tokens) - done, max_length)
        end = done + n_pred
        inputs = tokens[max(end - max_length - 1, 0) : end - 1]
        windows.append((inputs, tokens[end - n_pred : end]))
        done = end
    # make_disjoint_window: the context keeps only what precedes the first predicted token
    return [(inputs[: len(inputs) - (len(pred) - 1)], pred) for inputs, pred in windows]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` before the first occurrence of any non-empty stop string (lm-eval's postprocess_generated_text)."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text
