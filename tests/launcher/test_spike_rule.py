"""The spike rule (launcher/spikes.py SpikeDetector) and the data's skipped ranges (launcher/data.py
SkippedSamples), on plain numbers."""

from __future__ import annotations

import math

from launcher.data import SkippedSamples
from launcher.spikes import SpikeDetector


def feed(detector: SpikeDetector, losses: list[float]) -> list[int]:
    """The steps (1-based) the detector flags over `losses` (gradient norm held at 1)."""
    return [step for step, loss in enumerate(losses, 1) if detector.check(step, {"loss": loss, "grad_norm": 1.0})]


def test_flags_a_jump_above_the_band_after_the_warm_up_only():
    noisy = [3.0 + 0.01 * ((-1) ** i) for i in range(20)]
    assert feed(SpikeDetector(window=5, z=6.0), [9.0, *noisy]) == []  # a jump inside the warm-up is not judged
    assert feed(SpikeDetector(window=5, z=6.0), [*noisy, 9.0, *noisy]) == [21]


def test_a_falling_loss_and_a_flat_one_are_never_flagged():
    falling = [5.0 - 0.1 * i for i in range(40)]
    assert feed(SpikeDetector(window=5, z=3.0), falling) == []
    flat = [2.0] * 20 + [2.0 + 1e-6]  # the 1% floor on the deviation: no flag for noise on a flat stretch
    assert feed(SpikeDetector(window=5, z=3.0), flat) == []


def test_a_flagged_step_stays_out_of_the_window_and_nan_is_left_to_the_nonfinite_guard():
    detector = SpikeDetector(window=4, z=3.0)
    assert feed(detector, [1.0, 1.01, 0.99, 1.0, 5.0, 5.0, math.nan, 1.0]) == [5, 6]
    assert [values["loss"] for _, values in detector.history] == [1.01, 0.99, 1.0, 1.0]


def test_grad_norm_spikes_count_and_a_roll_back_forgets_the_replayed_steps():
    detector = SpikeDetector(window=3, z=3.0)
    for step in range(1, 7):
        assert not detector.check(step, {"loss": 1.0, "grad_norm": 0.5})
    assert set(detector.check(7, {"loss": 1.0, "grad_norm": 50.0})) == {"grad_norm"}
    detector.forget_after(4)
    assert [step for step, _ in detector.history] == [4]


def test_skipped_samples_jump_to_the_end_of_every_range_reached():
    skipped = SkippedSamples([[16, 24], [8, 16]])
    assert [skipped.past(p) for p in (0, 8, 12, 16, 24)] == [0, 24, 24, 24, 24]
    skipped.add(8, 16)
    assert skipped.state() == [[8, 16], [16, 24]]


def test_token_batches_jump_over_skipped_samples_and_keep_them_through_a_resume(tmp_path):
    from data_pipeline.formats import PackedDataset
    from data_pipeline.synthetic import write_arithmetic_shards
    from launcher.data import TokenBatches

    dataset = PackedDataset(write_arithmetic_shards(tmp_path, "test-arith"))

    def batches(**extra) -> TokenBatches:
        return TokenBatches(
            dataset, seq_len=32, global_batch=8, dp_rank=0, dp_degree=1, seed=1, val_fraction=0.01, **extra
        )

    plain, skipping = batches(), batches(skip_samples=[[8, 16]])
    first, _, third = plain.next_batch(), plain.next_batch(), plain.next_batch()
    assert skipping.next_batch().equal(first) and skipping.last_batch == (0, 8)
    assert skipping.next_batch().equal(third) and skipping.last_batch == (16, 24)
    state = skipping.state_dict()
    assert state["skipped"] == [[8, 16]]
    resumed = batches(skip_samples=[[40, 48]])  # a resume keeps the checkpoint's ranges and adds its own
    resumed.load_state_dict(state)
    assert resumed.samples == 24 and resumed.skipped.state() == [[8, 16], [40, 48]]
