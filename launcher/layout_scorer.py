"""The evaluator's Scorer over the model being trained, under whatever layout trains it.

`LayoutScorer` is evaluation.loom_scorer's `TokenScorer` (HFLM's tokenisation, length-sorted right-padded batches,
rolling windows, greedy generation) with the train module's scoring forward (`TrainModule.score_batch`) and greedy
decoding (`TrainModule.generate_greedy`: the KV cache where the layout has one, full forwards under tensor and
context parallel) in place of a loaded model, so the loop's numbers are the offline command's. Under a layout whose
forward is a collective (FSDP, ZeRO-3, tensor, context, expert or pipeline parallel) every rank must run the same
number of forwards: each call first agrees on the most batches any rank has and pads the others with dummy
batches (and decoding by forwards agrees before every step); the runner calls it on every rank even with no
requests (`lockstep`). Batches are padded to the layout's shape (`scoring_shape`: what training's sequence length
divides by under sequence and context parallel, the training batch under pipeline parallel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from evaluation.loom_scorer import TokenScorer
from evaluation.requests import GenerationRequest
from evaluation.token_requests import TokenRules
from launcher.train_modules import TrainModule
from launcher.watchdog import note_progress


class LayoutScorer(TokenScorer):
    lockstep = True

    def __init__(
        self,
        module: TrainModule,
        device: torch.device,
        rules: TokenRules,
        *,
        max_length: int,
        batch_size: int,
        pad_id: int,
        stop_ids: Sequence[int] = (),
    ) -> None:
        super().__init__(rules, max_length=max_length, batch_size=batch_size, pad_id=pad_id, stop_ids=stop_ids)
        self.module, self.device = module, device

    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        mine = -(-len(pairs) // self.batch_size)
        most = self._most_over_ranks(mine)
        results = super().score_tokens(pairs)
        for _ in range(most - mine):  # the forwards other ranks still run
            self._score_batch(torch.full((1, 1), self.pad_id), torch.full((1, 1), self.pad_id), [])
        return results

    def generate_until(self, requests: Sequence[GenerationRequest]) -> list[str]:
        mine = self.generation_batch_count(list(requests))
        most = self._most_over_ranks(mine)
        results = super().generate_until(list(requests))
        for _ in range(most - mine):  # join the decoding other ranks still run
            self.module.generate_greedy([], 1, stop_ids=self.stop_ids, pad_id=self.pad_id)
        return results

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, stop_when) -> list[list[int]]:
        note_progress()  # a long evaluation inside one step is not a hang
        return self.module.generate_greedy(
            prompts, max_new_tokens, stop_ids=self.stop_ids, pad_id=self.pad_id, stop_when=stop_when
        )

    def _most_over_ranks(self, count: int) -> int:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return count
        value = torch.tensor([count], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def _score_batch(
        self, tokens: torch.Tensor, targets: torch.Tensor, spans: list[tuple[int, int]]
    ) -> list[tuple[float, bool]]:
        note_progress()
        rows, width = self.module.scoring_shape(*tokens.shape)
        padded = torch.full((rows, width), self.pad_id, dtype=torch.long)
        padded_targets = padded.clone()
        padded[: tokens.shape[0], : tokens.shape[1]] = tokens
        padded_targets[: targets.shape[0], : targets.shape[1]] = targets
        scores = self.module.score_batch(padded.to(self.device), padded_targets.to(self.device)).float().cpu()
        return [
            (float(scores[row, start:end, 0].sum()), bool(scores[row, start:end, 1].all()))
            for row, (start, end) in enumerate(spans)
        ]
