"""Loom's rule families decide as datatrove's filters do, on documentation nobody here wrote (machine_docs.py):
each family alone and the four chained in FineWeb's order agree with datatrove 0.10 (run in the same process) on
at least 99% of documents; every disagreement is printed. The default suite runs an evenly spaced ~200 of the
corpus; the whole corpus (>= 2,000 documents, ~3 minutes of datatrove's time on one core) is marked slow."""

from __future__ import annotations

import pytest

from tests.data_pipeline.datatrove_agreement import FAMILIES, compare
from tests.data_pipeline.machine_docs import machine_documents


@pytest.fixture(scope="module")
def corpus():
    return machine_documents()


def _check(documents, capsys):
    result = compare(documents)
    with capsys.disabled():
        print("\n" + result.summary())
    for family in (*FAMILIES, "chained"):
        assert result.share(family) >= 0.99, f"{family}: {result.share(family):.4f}\n{result.summary()}"
    return result


def test_each_family_and_the_chain_agree_with_datatrove_on_a_sample(corpus, capsys):
    assert len(corpus) >= 500, f"the machine's documentation gave only {len(corpus)} documents"
    sample = corpus[:: len(corpus) // 200][:200]
    _check(sample, capsys)


@pytest.mark.slow
def test_each_family_and_the_chain_agree_with_datatrove_on_the_whole_corpus(corpus, capsys):
    assert len(corpus) >= 2000, f"the machine's documentation gave only {len(corpus)} documents"
    _check(corpus, capsys)
