"""What every source of training batches shares (launcher/data.py's token windows and synthetic rows,
launcher/preference_data.py's DPO pairs): the data error, the skipped ranges of the sample stream, the divisibility
of the global batch by the data-parallel ranks, the check of a checkpointed position against this run, and each
rank's share of a held-out set in micro batches."""

from __future__ import annotations

from typing import Any, Callable, Iterable

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
