"""Shared fixtures: one generated corpus with planted defects and one cleaning run over it per test session."""

from __future__ import annotations

import pytest
from pipeline_testing import run_clean_pipeline

from data_pipeline.synthetic import generate_corpus, write_corpus


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    corpus = generate_corpus(n_clean=500, n_exact_dups=40, n_near_dups=160, n_junk=60, n_contaminated=20, seed=3)
    paths = write_corpus(corpus, root / "source", files=3)
    return corpus, paths


@pytest.fixture(scope="session")
def planted_run(planted_corpus, tmp_path_factory):
    corpus, paths = planted_corpus
    output = tmp_path_factory.mktemp("planted_run") / "out"
    stats = run_clean_pipeline(paths["corpus"], paths["eval"], output, tasks=4, workers=1)
    return corpus, paths, output, stats
