"""Preference batches for DPO (data=preference): pairs from preference shards, deterministic and resumable.

The same contract as launcher/data.py's TokenBatches, with a pair where that has a window: the pairs (all shards in
name order) are split into a training head and a held-out tail (data.val_fraction); each epoch visits the training
pairs in a permutation drawn from (seed, epoch); a step takes the next `global batch` pairs of that stream and
data-parallel rank r reads the r-th contiguous slice, so the ranks are disjoint and together read what one process
would; the position (pairs read) is checkpointed and means the same on any layout; skipped ranges
(data.skip_samples, a loss spike's rollback) are jumped over.

A pair is packed as launcher/dpo.py's batch layout over data.seq_len + 1 positions: prompt and response of each side
cut to that length (the start kept), right-padded. Pairs whose prompt alone fills it would have nothing to score:
they are left out of the stream when the data is opened, with a warning naming how many and the first of them.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import numpy as np
import torch

from data_pipeline.preference_format import PreferenceDataset, PreferenceFormatError
from launcher.batch_ramp import GlobalBatchSchedule
from launcher.dpo import pack_pairs
from launcher.sample_stream import (
    DataError,
    EpochStream,
    rank_share_in_micro_batches,
)

log = logging.getLogger(__name__)


def open_preference_dataset(path: str, vocab_size: int) -> PreferenceDataset:
    try:
        dataset = PreferenceDataset(path)
    except PreferenceFormatError as exc:
        raise DataError(f"data: {exc}") from exc
    if dataset.max_token_id >= vocab_size:
        raise DataError(
            f"{path}: preference shards hold token id {dataset.max_token_id} but model.vocab_size={vocab_size}: "
            f"tokenise with the model's tokenizer (or set model.vocab_size > {dataset.max_token_id})"
        )
    return dataset


class PreferenceBatches(EpochStream):
    """Per-rank DPO batches [local pairs, seq_len + 1, 2, 2] (launcher/dpo.py's layout) with a checkpointable
    position (EpochStream's)."""

    count_key = "n_pairs"
    position_name = "preference data position was saved"

    def __init__(
        self,
        dataset: PreferenceDataset,
        *,
        seq_len: int,
        global_batch: int,
        dp_rank: int,
        dp_degree: int,
        seed: int,
        val_fraction: float,
        batch_schedule: Optional[GlobalBatchSchedule] = None,
        skip_samples: Iterable[Iterable[int]] = (),
    ) -> None:
        super().__init__(
            seq_len=seq_len,
            global_batch=global_batch,
            dp_rank=dp_rank,
            dp_degree=dp_degree,
            seed=seed,
            batch_schedule=batch_schedule,
            skip_samples=skip_samples,
        )
        self.dataset = dataset
        self.pad_id = 0  # right padding is never scored and never attended to by a real position
        n_val = int(dataset.n_pairs * val_fraction)
        self.val_pairs = self._scorable(range(dataset.n_pairs - n_val, dataset.n_pairs))
        self.train_pairs = self._scorable(range(dataset.n_pairs - n_val))
        self.n_pairs = len(self.train_pairs)
        if self.n_pairs < self.schedule.full:
            raise DataError(
                f"{dataset.directory}: {self.n_pairs} training pairs, fewer than one global batch of "
                f"{self.schedule.full}: use more pairs, a smaller batch or a smaller data.val_fraction"
            )

    def _scorable(self, indices: Iterable[int]) -> np.ndarray:
        """The pairs whose prompt leaves at least one response token within seq_len + 1 positions."""
        kept, dropped = [], []
        for i in indices:
            (dropped if len(self.dataset.pair(i)[0]) > self.seq_len else kept).append(i)
        if dropped:
            log.warning(
                "data.seq_len=%d: %d preference pair(s) left out, their prompt alone fills the sequence (first: %s)",
                self.seq_len,
                len(dropped),
                self.dataset.source(dropped[0]),
            )
        return np.array(kept, dtype=np.int64)

    def _pack(self, indices: Iterable[int]) -> torch.Tensor:
        return pack_pairs([self.dataset.pair(int(i)) for i in indices], self.seq_len + 1, self.pad_id)

    def next_batch(self) -> torch.Tensor:
        return self._pack(self.train_pairs[self.item_at(p)] for p in self.take_global_batch())

    def fingerprint(self) -> str:
        return f"preference:{self.dataset.fingerprint()}"

    def decontamination(self) -> Optional[dict]:
        return None  # preference shards record no decontamination

    source_names: list[str] = []  # per-source held-out losses are a language-modelling figure

    def eval_batches(self, n_sequences: int, micro_batch: int) -> list[torch.Tensor]:
        """This rank's share of the first `n_sequences` held-out pairs, in micro batches (the held-out DPO loss)."""
        return rank_share_in_micro_batches(
            min(n_sequences, len(self.val_pairs)),
            self.dp_rank,
            self.dp_degree,
            micro_batch,
            lambda i: self._pack([self.val_pairs[i]])[0].numpy(),
        )
