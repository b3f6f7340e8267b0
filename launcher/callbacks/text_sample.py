"""A greedy text sample from trainer.sample_prompt, logged as "sample": every trainer.sample_every steps, and at
the last step when trainer.sample_tokens > 0 (sample_every 0: only then; < 0: never). Layouts that cannot
generate (pipeline, tensor or context parallel) say so once at the start."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.train_modules import StepOutput

log = logging.getLogger("launcher")


@torch.no_grad()
def sample_text(
    model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int, max_seq_len: int, eos_id: Optional[int]
) -> str:
    """Greedy continuation of the prompt, decoded when the data comes with a tokenizer, else token ids. Every rank
    runs it (sharded layouts need all ranks in the forward); rank 0 logs it."""
    from model.generation import generate

    if tokenizer is not None:
        prompt_ids = tokenizer.encode(prompt).ids or [eos_id or 0]
    else:
        prompt_ids = [eos_id if eos_id is not None else 0]
    max_new_tokens = max(1, min(max_new_tokens, max_seq_len - len(prompt_ids)))
    stop_tokens = (eos_id,) if eos_id is not None else ()
    # Eager even under parallel.compile: every decode length would be a new graph for the compiled blocks, and
    # a short diagnostic sample is not worth compiling.
    with torch.compiler.set_stance("force_eager"):
        new_ids = generate(model, [prompt_ids], max_new_tokens, greedy=True, stop_tokens=stop_tokens)[0]
    model.train()
    if tokenizer is not None:
        return prompt + tokenizer.decode(new_ids)
    return " ".join(map(str, prompt_ids + list(new_ids)))


class TextSample(Callback):
    def __init__(self, every: int, prompt: str, tokens: int) -> None:
        self.every, self.prompt, self.tokens = every, prompt, tokens
        self.model: Optional[torch.nn.Module] = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TextSample | None:
        t = cfg.trainer
        return cls(t.sample_every, t.sample_prompt, t.sample_tokens) if t.sample_every >= 0 else None

    def on_train_start(self, ctx: TrainContext) -> None:
        self.model, why_not = ctx.module.generation_model()
        if self.model is None:
            log.info(why_not)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if self.model is None:
            return
        if (self.every > 0 and step % self.every == 0) or (ctx.last and self.tokens):
            with ctx.paused(), ctx.module.scoring():  # scoring(): the parameters left as the optimizer knows them
                ctx.record["sample"] = sample_text(
                    self.model, ctx.data.tokenizer, self.prompt, self.tokens, ctx.cfg.model.max_seq_len, ctx.data.eos_id
                )
