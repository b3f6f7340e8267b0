"""Shared setup for the parallel tests: the harness importable by name (also inside spawned processes),
DeepSpeed on its CPU accelerator with a reused JIT-build cache, and single-process reference runs computed once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

REPO = HERE.parents[1]
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

_REFERENCES: dict = {}


@pytest.fixture(scope="session")
def reference_run():
    """reference_run(spec) -> RunResult of the single-process run, cached per (model, data, optimizer) spec."""
    import harness

    def get(spec: "harness.RunSpec") -> "harness.RunResult":
        key = repr(
            (
                spec.model_overrides,
                spec.steps,
                spec.global_batch,
                spec.seq_len,
                spec.seed,
                spec.lr,
                spec.weight_decay,
                spec.betas,
                spec.eps,
                spec.grad_clip,
                spec.start_step,
                spec.ignore_prefix,
                spec.optim,
            )
        )
        if key not in _REFERENCES:
            _REFERENCES[key] = harness.run_reference(spec)
        return _REFERENCES[key]

    return get
