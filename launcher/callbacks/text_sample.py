"""A greedy text sample from trainer.sample_prompt, logged as "sample": every trainer.sample_every steps, and at
the last step when trainer.sample_tokens > 0 (sample_every 0: only then; < 0: never). The train module decodes
under its layout (`TrainModule.generate_greedy`: the KV cache, or full forwards under tensor and context parallel);
pipeline parallel cannot generate and says so once at the start."""

from __future__ import annotations

import logging
from typing import Optional

from launcher.callbacks.base import Callback, TrainContext
from launcher.config import TrainConfig
from launcher.train_modules import StepOutput, TrainModule

log = logging.getLogger("launcher")


def sample_text(
    module: TrainModule, tokenizer, prompt: str, max_new_tokens: int, max_seq_len: int, eos_id: Optional[int]
) -> str:
    """Greedy continuation of the prompt, decoded when the data comes with a tokenizer, else token ids. Every rank
    runs it (sharded layouts need all ranks in the forward); rank 0 logs it."""
    if tokenizer is not None:
        prompt_ids = tokenizer.encode(prompt).ids or [eos_id or 0]
    else:
        prompt_ids = [eos_id if eos_id is not None else 0]
    max_new_tokens = max(1, min(max_new_tokens, max_seq_len - len(prompt_ids)))
    # Decoding by full forwards pads the last one (prompt + max_new_tokens - 1 tokens) to the layout's width.
    while max_new_tokens > 1 and module.scoring_shape(1, len(prompt_ids) + max_new_tokens - 1)[1] > max_seq_len:
        max_new_tokens -= 1
    stop_tokens = (eos_id,) if eos_id is not None else ()
    new_ids = module.generate_greedy([prompt_ids], max_new_tokens, stop_ids=stop_tokens)[0]
    if tokenizer is not None:
        return prompt + tokenizer.decode(new_ids)
    return " ".join(map(str, prompt_ids + list(new_ids)))


class TextSample(Callback):
    def __init__(self, every: int, prompt: str, tokens: int) -> None:
        self.every, self.prompt, self.tokens = every, prompt, tokens
        self.can_generate = False

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TextSample | None:
        t = cfg.trainer
        return cls(t.sample_every, t.sample_prompt, t.sample_tokens) if t.sample_every >= 0 else None

    def on_train_start(self, ctx: TrainContext) -> None:
        why_not = ctx.module.cannot_generate()
        self.can_generate = why_not is None
        if why_not is not None:
            log.info("sample generation is skipped under %s", why_not)

    def on_step_end(self, ctx: TrainContext, step: int, out: StepOutput) -> None:
        if not self.can_generate:
            return
        if (self.every > 0 and step % self.every == 0) or (ctx.last and self.tokens):
            with ctx.paused(), ctx.module.scoring():  # scoring(): the parameters left as the optimizer knows them
                ctx.record["sample"] = sample_text(
                    ctx.module, ctx.data.tokenizer, self.prompt, self.tokens, ctx.cfg.model.max_seq_len, ctx.data.eos_id
                )
