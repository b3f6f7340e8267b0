"""The evaluator's Scorer over the model being trained, under whatever layout trains it.

`LayoutScorer` is evaluation.loom_scorer's `TokenScorer` (HFLM's tokenisation, length-sorted right-padded batches,
rolling windows, greedy generation) with the train module's scoring forward (`TrainModule.score_batch`) in place
of a loaded model, so the loop's numbers are the offline command's. Under a layout whose forward is a collective
(FSDP, ZeRO-3, tensor, expert or pipeline parallel) every rank must run the same number of forwards: each call
first agrees on the most batches any rank has and pads the others with dummy batches; the runner calls it on every
rank even with no requests (`lockstep`). Batches are padded to the layout's shape (`scoring_shape`: a multiple of
tp wide under sequence parallel, the training batch under pipeline parallel).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from evaluation.loom_scorer import TokenScorer
from evaluation.token_requests import TokenRules
from launcher.train_modules import TrainModule


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
        self.generation_model, _ = module.generation_model()

    def score_tokens(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        mine = -(-len(pairs) // self.batch_size)
        most = self._most_over_ranks(mine)
        results = super().score_tokens(pairs)
        for _ in range(most - mine):  # the forwards other ranks still run
            self._score_batch(torch.full((1, 1), self.pad_id), torch.full((1, 1), self.pad_id), [])
        return results

    def _most_over_ranks(self, count: int) -> int:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return count
        value = torch.tensor([count], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def _score_batch(
        self, tokens: torch.Tensor, targets: torch.Tensor, spans: list[tuple[int, int]]
    ) -> list[tuple[float, bool]]:
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
