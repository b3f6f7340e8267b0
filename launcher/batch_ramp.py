"""The global batch of every step, ramped up over the first tokens of a run (trainer.batch_ramp).

Large runs start with a smaller global batch and grow it (Megatron's `--rampup-batch-size <start> <increment>
<samples>`, DeepSeek-V3's batch-size schedule). Here the ramp is counted in training tokens: the global batch
starts at `start` sequences and grows by `increment` sequences in equal stages, reaching the full global batch
(trainer.global_batch_size, or global_batch_tokens / seq_len) once `tokens` training tokens have been seen:

    stages = (full - start) / increment
    batch(seen) = full                                         if seen >= tokens
                = start + floor(seen * stages / tokens) * increment   otherwise

`seen` is the tokens consumed before the step (samples read x data.seq_len), which the data loader's position
holds, so a resume at any step computes the same batch, and the samples are read as one stream (each exactly once
per epoch) whatever the batch. The lr schedule counts optimizer steps, as without a ramp. Torch-free: the
validation pass checks a ramp before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GlobalBatchSchedule:
    """Sequences per optimizer step as a function of the samples read so far; without a ramp (start == 0) the
    full global batch at every step."""

    full: int  # the global batch after the ramp, in sequences
    seq_len: int
    start: int = 0  # 0: no ramp
    increment: int = 0
    tokens: int = 0  # training tokens over which the batch grows from `start` to `full`

    @property
    def ramps(self) -> bool:
        return self.start > 0

    def at(self, samples_seen: int) -> int:
        """The global batch of the step that starts after `samples_seen` samples."""
        seen = samples_seen * self.seq_len
        if not self.ramps or seen >= self.tokens:
            return self.full
        stages = (self.full - self.start) // self.increment
        return min(self.full, self.start + (seen * stages // self.tokens) * self.increment)

    def describe(self) -> str:
        if not self.ramps:
            return f"{self.full}"
        return f"{self.start} -> {self.full} by {self.increment} over {self.tokens:,} tokens, then {self.full}"


def ramp_problem(start: int, increment: int, tokens: int, full: int, divisor: int) -> str | None:
    """Why trainer.batch_ramp cannot run (None when it can): every batch of the ramp must be a multiple of
    `divisor` (trainer.micro_batch_size x data-parallel ranks), so the number of micro batches varies and each
    rank's share stays whole."""
    if start == 0 and increment == 0 and tokens == 0:
        return None
    if start <= 0 or increment <= 0 or tokens <= 0:
        return (
            f"trainer.batch_ramp start={start}, increment={increment}, tokens={tokens}: all three must be positive "
            f"(or all 0: no ramp)"
        )
    if start >= full:
        return f"trainer.batch_ramp.start={start} must be smaller than the global batch {full} it ramps up to"
    if (full - start) % increment:
        return (
            f"trainer.batch_ramp: the global batch {full} minus start {start} is not a multiple of increment "
            f"{increment}: the ramp must land on the global batch"
        )
    for key, value in (("start", start), ("increment", increment)):
        if value % divisor:
            return (
                f"trainer.batch_ramp.{key}={value} is not a multiple of trainer.micro_batch_size x data-parallel "
                f"ranks = {divisor}: every batch of the ramp must split into whole micro batches on every rank"
            )
    return None
