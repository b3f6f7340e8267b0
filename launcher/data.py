"""Training and evaluation batches from packed token shards, deterministic and resumable.

Written by hand rather than with torch's DataLoader: the position in the data must be part of the checkpoint and
mean the same thing on any number of data-parallel ranks (a run may resume on another layout), and reading a
memory-mapped window is cheap enough that worker processes would only add start-up time. StatefulDataLoader
(torchdata) would give the first but ties the state to the worker/rank layout.

`data=synthetic` replaces the shards with uniform random tokens (`SyntheticBatches`, same surface) for throughput
measurements, where reading data must not be what is measured.

The token stream (all shards, in name order) is split into a training head and a held-out tail
(`data.val_fraction`). Training samples are windows of seq_len + 1 tokens starting every seq_len tokens; each
epoch visits them in a fresh permutation drawn from (seed, epoch), and the epochs follow each other as one stream
of samples. A step consumes the next `global batch` samples of that stream (the batch of the step: fixed, or
growing under trainer.batch_ramp, launcher/batch_ramp.py), and data-parallel rank r reads the r-th contiguous
slice of them, so the ranks are disjoint and their union is exactly what one process would read with the same
global batch. Nothing is dropped or repeated: every window is read exactly once per epoch (a step may end one
epoch and begin the next). The position is the number of samples read, so a resume at any step continues the
stream exactly, on any data-parallel layout.

Shards with a loss mask (supervised fine-tuning, data_pipeline/chat.py) give batches [B, 2, seq_len + 1]: each
row's tokens and their 0/1 loss mask, read from the same windows; `inputs_and_labels` turns either kind into the
model's inputs and labels, a label counting (not IGNORE_INDEX) when the mask of the token it predicts is 1.
Conversations are packed back to back and windows cut across them as across any documents; the document mask
(model.document_mask_eos_id) keeps them apart.

Ranges of the stream can be skipped (`SkippedSamples`: data.skip_samples, and the batches a loss spike rolled
back, launcher/spikes.py): reaching a range's start, the position jumps to its end. The ranges are part of the
checkpointed position, so a resumed run never trains on them either.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch

from data_pipeline.formats import PackedDataset, ShardFormatError
from launcher.batch_ramp import GlobalBatchSchedule

# What every batch source shares (launcher/sample_stream.py; DataError and SkippedSamples are imported from here too)
from launcher.sample_stream import BatchStream, DataError, EpochStream, SkippedSamples  # noqa: F401 (re-exported)
from launcher.sample_stream import check_saved_with as _check_saved_with
from launcher.sample_stream import rank_share_in_micro_batches as _rank_share_in_micro_batches
from model.loss import IGNORE_INDEX

log = logging.getLogger(__name__)


def resolve_data_dir(data_cfg: Any) -> Path:
    """The shard directory: `data.path` for data=packed (and data=preference); for data=embedded the generated
    corpus, built once.

    Every rank calls this; build_default_corpus serialises concurrent callers on a file lock, so the first one
    builds while the others wait and then find it cached.
    """
    if data_cfg.name in ("packed", "preference"):
        path = Path(data_cfg.path)
        if not path.is_dir():
            raise DataError(f"data.path={data_cfg.path}: no such directory of {data_cfg.name} shards")
        return path
    from data_pipeline.embedded import build_default_corpus

    return Path(build_default_corpus(data_cfg.cache_dir))


def open_dataset(data_dir: Path, vocab_size: int) -> PackedDataset:
    try:
        dataset = PackedDataset(data_dir)
    except ShardFormatError as exc:
        raise DataError(f"data: {exc}") from exc
    if dataset.vocab_size > vocab_size:
        raise DataError(
            f"{data_dir}: shards use a vocabulary of {dataset.vocab_size} tokens but model.vocab_size={vocab_size}: "
            f"set model.vocab_size >= {dataset.vocab_size}"
        )
    return dataset


def inputs_and_labels(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of a batch of rows [B, seq_len + 1] (or DPO's pairs [B, seq_len + 1, 2, 2],
    launcher/dpo.py: position-major, split the same way), or of rows with their loss mask [B, 2, seq_len + 1]:
    labels are the next tokens, IGNORE_INDEX where the predicted token's mask is 0."""
    if batch.dim() != 3:
        return batch[:, :-1], batch[:, 1:]
    tokens, mask = batch[:, 0], batch[:, 1]
    return tokens[:, :-1], tokens[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)


class TokenBatches(EpochStream):
    """Per-rank training batches [local batch, seq_len + 1] with a checkpointable position (EpochStream's)."""

    count_key = "n_windows"

    def __init__(
        self,
        dataset: PackedDataset,
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
        self.has_loss_mask = dataset.has_loss_mask  # rows come with their loss mask ([B, 2, seq_len + 1])
        self.val_tokens = max(seq_len + 1, int(dataset.n_tokens * val_fraction))
        self.train_tokens = dataset.n_tokens - self.val_tokens
        self.n_windows = max(0, (self.train_tokens - 1) // seq_len)
        if self.n_windows < self.schedule.full:
            raise DataError(
                f"{dataset.directory}: {self.train_tokens} training tokens make {self.n_windows} sequences of "
                f"data.seq_len={seq_len}, fewer than one global batch of {self.schedule.full}: use more data, a "
                f"smaller batch or a shorter data.seq_len"
            )
        self.last_read: tuple[np.ndarray, np.ndarray] = (np.empty(0, np.int64), np.empty(0, np.int64))

    def next_batch(self) -> torch.Tensor:
        positions = np.array(self.take_global_batch(), dtype=np.int64)
        windows = np.array([self.item_at(int(p)) for p in positions], dtype=np.int64)
        rows = np.stack([self._row(int(w) * self.seq_len) for w in windows])
        self.last_read = (positions, windows)  # which samples this rank just read (tests read the order)
        return torch.from_numpy(rows)

    def _row(self, start: int) -> np.ndarray:
        """seq_len + 1 tokens of the stream from `start`, stacked with their loss mask when the shards have one."""
        tokens = self.dataset.read(start, self.seq_len + 1)
        if not self.has_loss_mask:
            return tokens
        return np.stack([tokens, self.dataset.read_loss_mask(start, self.seq_len + 1).astype(np.int64)])

    def token_offsets(self, start: int, end: int) -> list[int]:
        """Where samples [start, end) of the stream begin in the shards' token stream (each reads seq_len + 1
        tokens from there): how a logged sample range leads back to its documents."""
        return [self.item_at(position) * self.seq_len for position in range(start, end)]

    def fingerprint(self) -> str:
        """What identifies the data: the shards' fingerprint (names, headers and content hashes)."""
        return f"packed:{self.dataset.fingerprint()}"

    def decontamination(self) -> Optional[dict]:
        """What the shards were decontaminated against (data_pipeline/decontamination.py); None: nothing known."""
        return self.dataset.decontamination

    # ------------------------------------------------------------------------------------------ evaluation
    def eval_batches(self, n_sequences: int, micro_batch: int) -> list[torch.Tensor]:
        """This rank's share of the first `n_sequences` held-out windows (equal shares), in micro batches (with
        their loss masks, as training's, when the shards have them)."""
        return self._held_out(n_sequences, micro_batch, lambda start, _: self._row(start))

    @property
    def source_names(self) -> list[str]:
        """The sources the shards record per document (sorted), [] when they record none."""
        return self.dataset.source_names

    def eval_sources(self, n_sequences: int, micro_batch: int) -> list[torch.Tensor]:
        """For every token of `eval_batches`' rows (same shapes), the index into `source_names` of the source of
        the document it belongs to."""
        return self._held_out(n_sequences, micro_batch, self.dataset.read_sources)

    def _held_out(
        self, n_sequences: int, micro_batch: int, read: Callable[[int, int], np.ndarray]
    ) -> list[torch.Tensor]:
        n_val_windows = (self.val_tokens - 1) // self.seq_len
        return _rank_share_in_micro_batches(
            min(n_sequences, n_val_windows),
            self.dp_rank,
            self.dp_degree,
            micro_batch,
            lambda w: read(self.train_tokens + w * self.seq_len, self.seq_len + 1),
        )


class SyntheticBatches(BatchStream):
    """Uniform random tokens of the model's vocabulary (data=synthetic), for benchmarks: there is nothing to learn
    (the loss stays near ln(vocab)), and no file is read. Row i of step s is drawn from its own stream
    (seed, s, i), so every data-parallel layout reads exactly the same global batch, and the position (steps
    drawn, and samples for trainer.batch_ramp) checkpoints and resumes like TokenBatches'. Held-out rows come from
    a stream of their own."""

    _TRAIN, _VAL = 0, 1

    def __init__(
        self,
        *,
        vocab_size: int,
        seq_len: int,
        global_batch: int,
        dp_rank: int,
        dp_degree: int,
        seed: int,
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
        self.vocab_size = vocab_size
        self.step = 0

    def _row(self, *key: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, *key])
        return rng.integers(0, self.vocab_size, size=self.seq_len + 1, dtype=np.int64)

    def next_batch(self) -> torch.Tensor:
        while self.skipped.covers(self.samples):  # rows are keyed by step: a skipped range is skipped batch-wise
            self.samples += self.schedule.at(self.samples)
            self.step += 1
        self.global_batch = self.schedule.at(self.samples)
        self.last_batch = (self.samples, self.samples + self.global_batch)
        local = self.global_batch // self.dp_degree
        first = self.dp_rank * local
        rows = [self._row(self._TRAIN, self.step, i) for i in range(first, first + local)]
        self.step += 1
        self.samples += self.global_batch
        return torch.from_numpy(np.stack(rows))

    def fingerprint(self) -> str:
        return f"synthetic:vocab={self.vocab_size}:seq_len={self.seq_len}:seed={self.seed}"

    def decontamination(self) -> Optional[dict]:
        return None  # random tokens: decontaminated against nothing

    def state_dict(self) -> dict[str, int]:
        return {
            "synthetic_steps": self.step,
            "synthetic_samples": self.samples,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "vocab_size": self.vocab_size,
            "skipped": self.skipped.state(),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        _check_saved_with(
            state,
            self,
            ("seed", "seq_len", "vocab_size"),
            "synthetic data was drawn",
            "resume with the same settings (or start a new run_dir)",
        )
        self.step = int(state["synthetic_steps"])
        # Saved before batch ramps: every step read the full global batch.
        self.samples = int(state.get("synthetic_samples", self.step * self.schedule.full))
        self.global_batch = self.schedule.at(self.samples)
        for start, end in state.get("skipped", []):
            self.skipped.add(start, end)

    source_names: list[str] = []  # random tokens come from no source
    has_loss_mask = False  # every token counts

    def eval_batches(self, n_sequences: int, micro_batch: int) -> list[torch.Tensor]:
        """This rank's equal share of `n_sequences` held-out rows, in micro batches (as TokenBatches does)."""
        return _rank_share_in_micro_batches(
            n_sequences, self.dp_rank, self.dp_degree, micro_batch, lambda i: self._row(self._VAL, i)
        )


@dataclass
class TrainingData:
    """What the trainer reads: the batches, and the tokenizer and end-of-text id when the data has them (for
    decoded samples)."""

    batches: Union[TokenBatches, SyntheticBatches]
    tokenizer: Any
    eos_id: Optional[int]


def check_document_ends(dataset: PackedDataset, eos_id: int, sample: int = 64) -> None:
    """model.document_mask_eos_id must be the token that ends every document of the shards: the shards' eos_id,
    and the last token of (the first `sample` of) each shard's documents."""
    recorded = dataset.tokenizer.get("eos_id")
    if recorded != eos_id:
        raise DataError(
            f"model.document_mask_eos_id={eos_id} but the shards in {dataset.directory} record "
            f"eos_id={recorded}: set model.document_mask_eos_id={recorded}"
            + (" (or null)" if recorded is not None else " (null: these shards mark no document end)")
        )
    for shard in dataset.shards:
        for i in range(min(sample, shard.n_documents)):
            document = shard.document(i)
            if len(document) and int(document[-1]) != eos_id:
                raise DataError(
                    f"model.document_mask_eos_id={eos_id}: document {i} of {shard.header_path} ends "
                    f"with token {int(document[-1])}, not eos_id {eos_id}, so the end-of-document tokens "
                    f"do not mark the documents; set model.document_mask_eos_id=null"
                )


def open_training_data(
    data_cfg: Any,
    *,
    vocab_size: int,
    global_batch: int,
    dp_rank: int,
    dp_degree: int,
    seed: int,
    document_mask_eos_id: Optional[int] = None,
    batch_schedule: Optional[GlobalBatchSchedule] = None,
    skip_samples: Iterable[Iterable[int]] = (),
) -> TrainingData:
    """The configured data for this data-parallel rank: packed shards (data=packed or the embedded corpus) or
    synthetic tokens. `document_mask_eos_id` (model.document_mask_eos_id) is checked against the shards;
    `batch_schedule` (trainer.batch_ramp) sets each step's global batch (default: `global_batch` throughout)."""
    if data_cfg.name == "synthetic":
        batches = SyntheticBatches(
            vocab_size=vocab_size,
            seq_len=data_cfg.seq_len,
            global_batch=global_batch,
            dp_rank=dp_rank,
            dp_degree=dp_degree,
            seed=seed,
            batch_schedule=batch_schedule,
            skip_samples=skip_samples,
        )
        return TrainingData(batches, tokenizer=None, eos_id=None)
    data_dir = resolve_data_dir(data_cfg)
    stream = {
        "seq_len": data_cfg.seq_len,
        "global_batch": global_batch,
        "dp_rank": dp_rank,
        "dp_degree": dp_degree,
        "seed": seed,
        "val_fraction": data_cfg.val_fraction,
        "batch_schedule": batch_schedule,
        "skip_samples": skip_samples,
    }
    if data_cfg.name == "preference":  # DPO pairs (trainer.objective=dpo)
        from launcher.preference_data import PreferenceBatches, open_preference_dataset

        pairs = open_preference_dataset(data_dir, vocab_size)
        return TrainingData(PreferenceBatches(pairs, **stream), load_tokenizer(data_dir), pairs.tokenizer.get("eos_id"))
    dataset = open_dataset(data_dir, vocab_size)
    if document_mask_eos_id is not None:
        check_document_ends(dataset, document_mask_eos_id)
    return TrainingData(TokenBatches(dataset, **stream), load_tokenizer(data_dir), dataset.tokenizer.get("eos_id"))


def copy_tokenizer(data_cfg: Any, run_dir: str | os.PathLike) -> Optional[Path]:
    """Copy the data's tokenizer.json (beside the packed shards) to `<run_dir>/tokenizer.json`, atomically, so the
    run's checkpoints export to a complete Hugging Face directory and `python -m model.generate <run_dir>` takes
    text. None (nothing copied) for synthetic data or shards that came without a tokenizer."""
    if data_cfg.name == "synthetic":
        return None
    source = resolve_data_dir(data_cfg) / "tokenizer.json"
    if not source.is_file():
        return None
    target = Path(run_dir) / "tokenizer.json"
    tmp = target.with_name(f".tokenizer.json.tmp.{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


DECONTAMINATION_FILE = "decontamination.json"


def write_decontamination_record(batches: Union[TokenBatches, SyntheticBatches], run_dir: str | os.PathLike) -> Path:
    """`<run_dir>/decontamination.json`, atomically: the record the run's shards carry (what their data was
    decontaminated against, per evaluation task), or null when they carry none. Checkpoints hold it too (in
    train_state.json), for an evaluation of one checkpoint."""
    target = Path(run_dir) / DECONTAMINATION_FILE
    tmp = target.with_name(f".{DECONTAMINATION_FILE}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(batches.decontamination(), indent=1) + "\n")
    os.replace(tmp, target)
    return target


def load_tokenizer(data_dir: Path):
    """The `tokenizers` Tokenizer saved next to the shards (tokenizer.json), or None when there is none."""
    path = Path(data_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - a bad tokenizer only costs the decoded sample text
        log.warning("cannot load %s (%s): samples will be logged as token ids", path, exc)
        return None
