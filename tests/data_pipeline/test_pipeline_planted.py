"""End to end on a generated corpus with planted defects: each kind of defect is removed by the step meant for
it, unrelated documents survive, and every step accounts for every document."""

from __future__ import annotations

from collections import Counter

from pipeline_testing import removed_documents

from data_pipeline.synthetic import jaccard, word_shingles


def best_match_jaccard(shingles: dict[str, set]) -> dict[str, float]:
    """Exact best-match Jaccard of every document against all others, through an inverted shingle index."""
    postings: dict[tuple, list[str]] = {}
    for doc_id, grams in shingles.items():
        for gram in grams:
            postings.setdefault(gram, []).append(doc_id)
    best = {}
    for doc_id, grams in shingles.items():
        shared = Counter(other for gram in grams for other in postings[gram] if other != doc_id)
        best[doc_id] = max((n / (len(grams) + len(shingles[other]) - n) for other, n in shared.items()), default=0.0)
    return best


def test_best_match_index_agrees_with_pairwise_jaccard(planted_corpus):
    corpus, _ = planted_corpus
    sample = {d["id"]: word_shingles(d["text"]) for d in corpus.documents[:60]}
    fast = best_match_jaccard(sample)
    for doc_id, grams in sample.items():
        assert fast[doc_id] == max(jaccard(grams, other) for o, other in sample.items() if o != doc_id)


def test_every_step_accounts_for_every_document(planted_run):
    corpus, _, output, stats = planted_run
    assert stats["normalize"]["docs_in"] == len(corpus.documents)
    previous_out = None
    for name, s in stats.items():
        assert s["docs_kept"] + s["docs_excluded"] + s["docs_quarantined"] == s["docs_in"], name
        if previous_out is not None:
            assert s["docs_in"] == previous_out, name
        previous_out = s["docs_out"]
    assert (output / "report.md").exists() is False  # the fixture runs the executor only; the CLI writes the report


def test_exact_duplicates_leave_one_copy(planted_run):
    corpus, _, output, _ = planted_run
    removed = removed_documents(output)
    groups: dict[str, list[str]] = {}
    for doc_id, info in corpus.truth.items():
        if info["kind"] == "exact_dup":
            groups.setdefault(info["of"], [info["of"]]).append(doc_id)
    assert groups
    for original, members in groups.items():
        # FineWeb's order: the heuristics first (they drop the upper-case copies), exact dedup over what they keep
        reached = [m for m in members if removed.get(m, ("",))[0] != "heuristics"]
        after_exact = [m for m in reached if removed.get(m, ("",))[0] != "exact_dedup"]
        assert len(after_exact) == 1, (original, members, [removed.get(m) for m in members])
        assert after_exact[0] == min(reached)  # the lowest id is the one kept


def test_near_duplicates_removed_and_unrelated_documents_kept(planted_run):
    corpus, _, output, _ = planted_run
    removed = removed_documents(output)
    dedup_removed = {i for i, (step, _) in removed.items() if step in ("exact_dedup", "minhash_dedup")}
    high = [p for p in corpus.near_pairs if p["jaccard"] >= 0.85]
    assert len(high) >= 50
    caught = [p for p in high if p["a"] in dedup_removed or p["b"] in dedup_removed]
    assert len(caught) >= 0.95 * len(high), f"{len(caught)}/{len(high)} near-duplicate pairs with J >= 0.85 removed"

    # Documents whose best match anywhere in the corpus is below 0.6 must (almost) never be removed as duplicates.
    ids = [d["id"] for d in corpus.documents if corpus.truth[d["id"]]["kind"] != "junk"]
    best = best_match_jaccard({d["id"]: word_shingles(d["text"]) for d in corpus.documents if d["id"] in set(ids)})
    isolated = [doc_id for doc_id in ids if best[doc_id] < 0.6]
    assert len(isolated) >= 400
    wrong = [i for i in isolated if i in dedup_removed]
    assert len(wrong) < 0.01 * len(isolated), f"{len(wrong)} of {len(isolated)} isolated documents removed"


def test_junk_and_contamination_removed_by_their_steps(planted_run):
    corpus, _, output, _ = planted_run
    removed = removed_documents(output)
    by_kind: Counter = Counter()
    for doc_id, info in corpus.truth.items():
        step = removed.get(doc_id, ("kept",))[0]
        if info["kind"] == "junk":
            assert step == "heuristics", (doc_id, info, step)
        if info["kind"] == "contaminated":
            assert step == "decontaminate", (doc_id, step)
            assert removed[doc_id][1]["excluded_eval_set"] == "eval.jsonl"
        if info["kind"] == "clean" and step in ("heuristics", "decontaminate"):
            by_kind[step] += 1
    assert by_kind == Counter(), f"clean documents removed by quality filters: {by_kind}"
