"""What every source of training batches shares (launcher/data.py's token windows and synthetic rows,
launcher/preference_data.py's DPO pairs): the data error, the skipped ranges of the sample stream, the epoch stream
itself with its checkpointed position (`EpochStream`), the divisibility of the global batch by the data-parallel
ranks, the check of a checkpointed position against this run, and each rank's share of a held-out set in micro
batches."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from launcher.batch_ramp import GlobalBatchSchedule


class DataError(ValueError):
    """The training data cannot serve this config (missing, too small, or changed since the checkpoint)."""


class SkippedSamples:
    """[start, end) ranges of the sample stream never trained on. Kept sorted; `past(p)` is the first position at
    or after p outside every range."""

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self.ranges: list[tuple[int, int]] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if (int(start), int(end)) not in self.ranges:
            self.ranges = sorted([*self.ranges, (int(start), int(end))])

    def covers(self, position: int) -> bool:
        return any(start <= position < end for start, end in self.ranges)

    def past(self, position: int) -> int:
        for start, end in self.ranges:  # sorted: a jump lands before any later range's start or inside it
            if start <= position < end:
                position = end
        return position

    def state(self) -> list[list[int]]:
        return [[start, end] for start, end in self.ranges]


def rank_share_in_micro_batches(
    n_rows: int, dp_rank: int, dp_degree: int, micro_batch: int, read_row: Callable[[int], np.ndarray]
) -> list[torch.Tensor]:
    """Rows [r * n_rows // dp_degree, (r + 1) * n_rows // dp_degree) of a held-out set (r = dp_rank), read one by
    one with `read_row(index)` and stacked into micro batches of `micro_batch` rows (the last may be short)."""
    per_rank = n_rows // dp_degree
    first = dp_rank * per_rank
    end = first + per_rank
    return [
        torch.from_numpy(np.stack([read_row(i) for i in range(lo, min(lo + micro_batch, end))]))
        for lo in range(first, end, micro_batch)
    ]


def check_divisible(schedule: GlobalBatchSchedule, dp_degree: int) -> None:
    for batch in {schedule.full, schedule.start or schedule.full, schedule.increment or schedule.full}:
        if batch % dp_degree != 0:
            raise DataError(f"global batch {batch} is not divisible by {dp_degree} data-parallel ranks")


def check_saved_with(state: dict[str, int], current: Any, keys: tuple[str, ...], what: str, fix: str) -> None:
    """DataError unless the checkpoint's data `state` has this run's values for `keys`."""
    for key in keys:
        if int(state[key]) != getattr(current, key):
            raise DataError(
                f"the checkpoint's {what} with {key}={state[key]} but this run has {getattr(current, key)}: {fix}"
            )


class BatchStream:
    """What every batch source starts with: the global batch schedule (checked against the data-parallel ranks),
    the skipped ranges, this rank's place, and the position (samples read by all ranks since the start)."""

    def __init__(
        self,
        *,
        seq_len: int,
        global_batch: int,
        dp_rank: int,
        dp_degree: int,
        seed: int,
        batch_schedule: Optional[GlobalBatchSchedule] = None,
        skip_samples: Iterable[Iterable[int]] = (),
    ) -> None:
        self.schedule = batch_schedule or GlobalBatchSchedule(global_batch, seq_len)
        check_divisible(self.schedule, dp_degree)
        self.skipped = SkippedSamples(skip_samples)
        self.last_batch = (0, 0)  # [start, end) of the global batch the last next_batch read, in the sample stream
        self.seq_len, self.seed = seq_len, seed
        self.global_batch = self.schedule.at(0)  # the batch of the next step (the last one read, after a step)
        self.dp_rank, self.dp_degree = dp_rank, dp_degree
        self.samples = 0  # samples read by all ranks together since the start of the run (the position)


class EpochStream(BatchStream):
    """The sample stream of a batch source: `n_items` training items (token windows, preference pairs) visited
    epoch after epoch, each epoch in a fresh permutation drawn from (seed, epoch). A step takes the next global
    batch of samples and data-parallel rank r the r-th contiguous slice of it, so the ranks are disjoint and together
    read what one process would. The position (samples read by all ranks) is what a checkpoint keeps, with the item
    count under `count_key` (the subclass's attribute of that name): it means the same on any layout.

    A subclass calls `__init__`, then sets its `count_key` attribute, and implements `next_batch`."""

    count_key = "n_items"
    position_name = "data position was saved"

    def __init__(self, **stream: Any) -> None:
        BatchStream.__init__(self, **stream)
        self._orders: dict[int, np.ndarray] = {}

    @property
    def n_items(self) -> int:
        return getattr(self, self.count_key)

    @property
    def epoch(self) -> int:
        return self.samples // self.n_items

    def item_at(self, position: int) -> int:
        """The item at `position` of the sample stream: its epoch's permutation, at its place in the epoch."""
        epoch, index = divmod(position, self.n_items)
        if epoch not in self._orders:
            self._orders = {e: order for e, order in self._orders.items() if e >= epoch - 1}  # at most two kept
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return int(self._orders[epoch][index])

    def take_global_batch(self) -> range:
        """Advance over the next global batch (past any skipped range) and return this rank's slice of positions."""
        self.samples = self.skipped.past(self.samples)
        self.global_batch = self.schedule.at(self.samples)
        self.last_batch = (self.samples, self.samples + self.global_batch)
        local = self.global_batch // self.dp_degree
        first = self.samples + self.dp_rank * local
        self.samples += self.global_batch
        return range(first, first + local)

    def next_batch(self) -> torch.Tensor:
        raise NotImplementedError

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "samples_in_epoch": self.samples % self.n_items,
            "seed": self.seed,
            "seq_len": self.seq_len,
            self.count_key: self.n_items,
            "skipped": self.skipped.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_saved_with(
            state,
            self,
            ("seed", "seq_len", self.count_key),
            self.position_name,
            "resume with the same data, data.seq_len and seed (or start a new run_dir)",
        )
        self.samples = int(state["epoch"]) * self.n_items + int(state["samples_in_epoch"])
        self.global_batch = self.schedule.at(self.samples)
        for start, end in state.get("skipped", []):  # joined with this run's: a roll back keeps the newer ones
            self.skipped.add(start, end)
