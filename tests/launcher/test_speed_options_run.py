"""The model's speed options through `python -m launcher.train`: they are config keys a run takes on the command
line, document masking follows the end-of-document tokens of real packed shards, and shards whose documents do not
end with the configured token are refused before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from launcher_testing import losses, run_train, tiny_overrides

EOS = 0


@pytest.fixture(scope="module")
def eos_shards(tmp_path_factory) -> Path:
    """Arithmetic-progression documents, each ending with EOS (as the tokenize step writes them)."""
    from data_pipeline.formats import ShardWriter

    directory = tmp_path_factory.mktemp("eos_shards")
    rng = np.random.default_rng(1)
    with ShardWriter(directory, "part0", vocab_size=256, eos_id=EOS, tokenizer_id="test-arith-eos") as writer:
        for _ in range(200):
            n = int(rng.integers(5, 40))
            start, inc = int(rng.integers(1, 256)), int(rng.integers(1, 5))
            writer.add_document(np.append((start + inc * np.arange(n)) % 255 + 1, EOS))
    return directory


def test_speed_options_train_through_the_launcher(eos_shards, tmp_path):
    """The same 3 steps with and without fused projections, a padded vocabulary and document masking: both train;
    the step-1 losses (same weights, same batch) differ, which only the document mask can make them do."""
    options = {"model.fused_projections": "true", "model.vocab_multiple": 96, "model.document_mask_eos_id": EOS}
    runs = {}
    for name, extra in (("options", options), ("plain", {})):
        run_dir = tmp_path / name
        result = run_train(tiny_overrides(eos_shards, run_dir, max_steps=3, **extra), tmp_path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        runs[name] = losses(run_dir)
    assert sorted(runs["options"]) == [1, 2, 3] and all(np.isfinite(list(runs["options"].values())))
    assert abs(runs["options"][1] - runs["plain"][1]) > 1e-4, runs


def test_document_mask_token_must_end_the_shards_documents(eos_shards, shards):
    from data_pipeline.formats import PackedDataset
    from launcher.data import DataError, check_document_ends

    check_document_ends(PackedDataset(eos_shards), EOS)
    with pytest.raises(DataError, match="record eos_id=0: set model.document_mask_eos_id=0"):
        check_document_ends(PackedDataset(eos_shards), 5)
    with pytest.raises(DataError, match="ends with token .* not eos_id 0"):
        check_document_ends(PackedDataset(shards), EOS)  # eos_id 0 recorded, but no document ends with it
