"""MinHash near-dedup: signatures, banding, clustering and staged decisions against an exact-Jaccard oracle.

The corpus is generated here: base documents of random words from a large vocabulary (so unrelated documents
share no 5-gram) and variants made by replacing words with fresh tokens until the exact word-5-gram Jaccard
similarity reaches a target, so every similarity in the corpus is known exactly.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.document import Document
from data_pipeline.minhash import (
    MinHasher,
    MinHashParams,
    candidate_probability,
    choose_kept,
    components,
    deduplicate,
    id_sort_key,
    optimal_bands,
)
from data_pipeline.minhash.banding import detection_probability
from data_pipeline.shards import read_records
from data_pipeline.steps import build_step

VOCAB = [f"w{i}" for i in range(50_000)]


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    if len(words) < n:
        return {tuple(words)}
    return set(zip(*[words[i:] for i in range(n)]))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def variant(text: str, target: float, rng: random.Random, tag: str) -> tuple[str, float]:
    """Replace words (in a random order) with fresh tokens; binary search the count that lands nearest target."""
    words = text.split()
    order = rng.sample(range(len(words)), len(words))
    original = shingles(text)

    def edited(k: int) -> str:
        out = list(words)
        for j, pos in enumerate(order[:k]):
            out[pos] = f"{tag}x{j}"
        return " ".join(out)

    lo, hi = 0, len(words)  # Jaccard falls monotonically with k (fresh tokens only remove shared shingles)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if jaccard(original, shingles(edited(mid))) >= target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda k: abs(jaccard(original, shingles(edited(k))) - target))
    best = max(best, 1)
    text_b = edited(best)
    return text_b, jaccard(original, shingles(text_b))


def make_corpus(seed: int, n_base: int, targets: list[float]):
    """Documents [(id, text)] in shuffled order, and the planted pairs [(id_a, id_b, exact_jaccard)]."""
    rng = random.Random(seed)
    bases = [" ".join(rng.choices(VOCAB, k=rng.randint(120, 260))) for _ in range(n_base)]
    texts = list(bases)
    planted = []
    for k, target in enumerate(targets):
        text_b, sim = variant(bases[k], target, rng, tag=f"s{seed}v{k}")
        planted.append((k, len(texts), sim))
        texts.append(text_b)
    order = list(range(len(texts)))
    rng.shuffle(order)
    position = {original: new for new, original in enumerate(order)}
    ids = [f"d{position[i]:05d}" for i in range(len(texts))]
    docs = sorted(zip(ids, texts))
    return docs, [(ids[a], ids[b], sim) for a, b, sim in planted]


def exact_pairs(docs: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Brute-force reference: exact Jaccard of every pair sharing at least one shingle (all others are 0)."""
    sets = {doc_id: shingles(text) for doc_id, text in docs}
    by_shingle: dict = {}
    for doc_id, s in sets.items():
        for sh in s:
            by_shingle.setdefault(sh, []).append(doc_id)
    candidates = {tuple(sorted((a, b))) for members in by_shingle.values() for a in members for b in members if a < b}
    return {pair: jaccard(sets[pair[0]], sets[pair[1]]) for pair in candidates}


@pytest.fixture(scope="module")
def mixed_corpus():
    rng = random.Random(7)
    targets = [rng.uniform(0.5, 1.0) for _ in range(300)]
    return make_corpus(seed=1, n_base=500, targets=targets)


# ---------------------------------------------------------------------------------------------- signatures
def test_signature_agreement_is_an_unbiased_jaccard_estimate(mixed_corpus):
    docs, planted = mixed_corpus
    text = dict(docs)
    hasher = MinHasher(num_perm=128)
    a = hasher.signatures([text[x] for x, _, _ in planted])
    b = hasher.signatures([text[y] for _, y, _ in planted])
    estimate = (a == b).mean(axis=1)
    exact = np.array([sim for _, _, sim in planted])
    errors = estimate - exact
    assert abs(errors.mean()) < 0.01, f"biased estimate: mean error {errors.mean():.4f}"
    sd = np.sqrt(exact * (1 - exact) / 128) + 1e-3
    assert np.mean(np.abs(errors) > 4 * sd) < 0.01
    unrelated = hasher.signatures([docs[0][1], docs[1][1]])
    assert (unrelated[0] == unrelated[1]).mean() < 0.05


def test_signatures_do_not_depend_on_batching_or_process_state():
    rng = random.Random(3)
    texts = [" ".join(rng.choices(VOCAB, k=rng.randint(0, 40))) for _ in range(30)]
    texts += ["", "one", "two words", "Case  MIXED\twith\nwhitespace here", "a \x00 sentinel word inside it ok"]
    whole = MinHasher(seed=5).signatures(texts)
    assert whole.shape == (len(texts), 128) and whole.dtype == np.uint32
    pieces = np.concatenate([MinHasher(seed=5).signatures(texts[i : i + 7]) for i in range(0, len(texts), 7)])
    np.testing.assert_array_equal(whole, pieces)
    one_by_one = np.stack([MinHasher(seed=5).signatures([t])[0] for t in texts])
    np.testing.assert_array_equal(whole, one_by_one)
    again = MinHasher(seed=5)
    again.signatures(texts[::-1])  # warm its word memo in another order
    np.testing.assert_array_equal(whole, again.signatures(texts))
    # lower-cased, whitespace-insensitive words
    same = MinHasher(seed=5).signatures(["Case mixed with whitespace here", "case  MIXED\twith\nwhitespace here"])
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(whole[0], MinHasher(seed=6).signatures([texts[0]])[0])


def test_short_documents_get_one_shingle_of_all_words():
    hasher = MinHasher(ngram=5)
    sig = hasher.signatures(["a b c", "a b c", "a b d", "", ""])
    assert (sig[0] == sig[1]).all() and (sig[3] == sig[4]).all()
    assert (sig[0] == sig[2]).mean() < 0.1 and (sig[0] == sig[3]).mean() < 0.1


# ---------------------------------------------------------------------------------------------- banding, clusters
def test_bands_minimise_weighted_error_and_validate():
    assert optimal_bands(0.8, 128, 0.5, 0.5) == (9, 13)  # datasketch's choice, as in the literature
    bands, rows = MinHashParams().banding
    assert bands * rows <= 128
    assert candidate_probability(0.85, bands, rows) > 0.99
    assert MinHashParams(bands=9, rows=13).banding == (9, 13)
    with pytest.raises(ValueError, match="bands and rows"):
        MinHashParams(bands=9)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashParams(bands=20, rows=13)
    with pytest.raises(ValueError, match="threshold"):
        MinHashParams(threshold=1.5)


def test_clusters_are_connected_components_keeping_the_lowest_id():
    ids = ["10", "9", "b", "a", "c", "100"]
    labels = components(6, np.array([[0, 1], [1, 5], [2, 3]]))
    kept = choose_kept(labels, lambda positions: [ids[p] for p in positions])
    assert kept == {0: (1, 3), 1: (1, 3), 5: (1, 3), 2: (3, 2), 3: (3, 2)}
    assert id_sort_key("9") < id_sort_key("10") < id_sort_key("a")


# ---------------------------------------------------------------------------------------------- decisions
def _clustered_pairs(decisions, planted):
    """Planted pairs the dedup put in one cluster (each base has at most one variant, so clusters are pairs)."""
    found = set()
    for a, b, _ in planted:
        removed = b if id_sort_key(b) > id_sort_key(a) else a
        kept = a if removed == b else b
        if removed in decisions and decisions[removed]["kept_id"] == kept:
            found.add((a, b))
    return found


def test_decisions_match_exact_jaccard_reference_within_the_computed_miss_rate(mixed_corpus):
    docs, planted = mixed_corpus
    params = MinHashParams()
    bands, rows = params.banding
    reference = exact_pairs(docs)
    # Only planted pairs share shingles, so the reference's duplicate pairs are exactly the planted ones >= 0.8.
    assert {p for p, s in reference.items() if s > 0.2} == {tuple(sorted((a, b))) for a, b, s in planted if s > 0.2}
    decisions = deduplicate([docs], params)
    found = _clustered_pairs(decisions, planted)
    sims = np.array([s for _, _, s in planted])
    p = detection_probability(sims, bands, rows, params.num_perm, params.threshold)
    above = sims >= params.threshold
    expected_wrong = float(np.sum(np.where(above, 1 - p, p)))
    sd = math.sqrt(float(np.sum(p * (1 - p))))
    wrong = [(a, b, s) for a, b, s in planted if ((a, b) in found) != (s >= params.threshold)]
    print(
        f"\nbands={bands} rows={rows}: {len(wrong)} of {len(planted)} pair decisions differ from exact Jaccard "
        f">= {params.threshold} (expected {expected_wrong:.1f} +- {sd:.1f}); "
        f"similarities of the mismatches: {sorted(round(s, 3) for _, _, s in wrong)}"
    )
    assert len(wrong) <= expected_wrong + 3 * sd + 1
    # Mismatches can only come from the estimator's noise near the threshold.
    assert all(0.65 <= s <= 0.92 for _, _, s in wrong)
    # No document outside a planted pair is removed.
    planted_ids = {x for a, b, _ in planted for x in (a, b)}
    assert set(decisions) <= planted_ids


def test_planted_near_duplicates_are_removed_and_distinct_documents_kept():
    rng = random.Random(11)
    targets = [rng.uniform(0.85, 1.0) for _ in range(150)] + [rng.uniform(0.2, 0.6) for _ in range(150)]
    docs, planted = make_corpus(seed=2, n_base=400, targets=targets)
    decisions = deduplicate([docs])
    found = _clustered_pairs(decisions, planted)
    high = [(a, b) for a, b, s in planted if s >= 0.85]
    recall = sum((a, b) in found for a, b in high) / len(high)
    best = {doc_id: 0.0 for doc_id, _ in docs}
    for (a, b), s in exact_pairs(docs).items():
        best[a], best[b] = max(best[a], s), max(best[b], s)
    low = [doc_id for doc_id, s in best.items() if s < 0.6]
    wrongly_removed = sum(doc_id in decisions for doc_id in low) / len(low)
    print(f"\nrecall on {len(high)} pairs >= 0.85: {recall:.3f}; wrongly removed {wrongly_removed:.4f} of {len(low)}")
    assert recall >= 0.95
    assert wrongly_removed < 0.01


def test_decisions_do_not_depend_on_sharding_or_order(mixed_corpus):
    docs, _ = mixed_corpus
    docs = docs[:400]
    one = deduplicate([docs])
    shuffled = list(docs)
    random.Random(5).shuffle(shuffled)
    three = deduplicate([shuffled[:90], shuffled[90:250], shuffled[250:]])
    assert one == three and len(one) > 0
    assert deduplicate([docs[:200], [], docs[200:]]) == one


def test_same_decisions_as_datasketch_minhash():
    """Away from the threshold both estimators decide the same; within ~0.1 of it each has its own noise."""
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(13)
    targets = [rng.uniform(0.9, 1.0) for _ in range(60)] + [rng.uniform(0.2, 0.6) for _ in range(60)]
    docs, _ = make_corpus(seed=3, n_base=200, targets=targets)

    def datasketch_signer(texts):
        sets = [[" ".join(s).encode() for s in sorted(shingles(t))] for t in texts]
        return np.stack([m.hashvalues for m in datasketch.MinHash.bulk(sets, num_perm=128)]).astype(np.uint32)

    ours = deduplicate([docs])
    theirs = deduplicate([docs], signer=datasketch_signer)
    assert set(ours) == set(theirs) and len(ours) >= 55


# ---------------------------------------------------------------------------------------------- the step
def test_step_excludes_near_duplicates_with_their_cluster(tmp_path):
    docs, planted = make_corpus(seed=4, n_base=60, targets=[0.95] * 10 + [0.3] * 10)
    documents = [Document(doc_id, text) for doc_id, text in docs]
    step = build_step("minhash_dedup", {"threshold": 0.8})
    kept = step(documents)
    excluded = step.context.excluded
    assert len(kept) + len(excluded) == len(documents)
    assert len(excluded) == 10
    kept_ids = {d.id for d in kept}
    for doc, reason, details in excluded:
        assert reason == "minhash_dedup:near_duplicate"
        assert details["kept_id"] in kept_ids and details["cluster_id"] == details["kept_id"]
        assert details["cluster_size"] == 2 and details["value"] >= details["threshold"] == 0.8  # value: similarity
        assert id_sort_key(details["kept_id"]) < id_sort_key(doc.id)
    with pytest.raises(ValueError, match="bands and rows"):
        build_step("minhash_dedup", {"bands": 4})


def _write_jsonl(path: Path, docs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs))
    return path


def _run_step(source: Path, output: Path, tasks: int, workers: int) -> Path:
    from data_pipeline.executors.base import PipelinePlan, StepSpec
    from data_pipeline.executors.local import LocalExecutor
    from data_pipeline.readers import InputSpec

    plan = PipelinePlan(
        input=InputSpec(path=str(source)), output=str(output), steps=[StepSpec("minhash_dedup", {})], tasks=tasks
    )
    LocalExecutor(plan, workers=workers, progress=lambda _: None).run()
    return output


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and not p.name.startswith(".")
        and "stats" not in p.relative_to(root).parts
        and ".markers" not in p.relative_to(root).parts
        and p.name != "plan.json"
    }


def test_a_task_killed_halfway_and_rerun_gives_the_same_output(tmp_path, monkeypatch):
    from data_pipeline.minhash import staged

    docs, _ = make_corpus(seed=6, n_base=80, targets=[0.95] * 15 + [0.4] * 10)
    source = _write_jsonl(tmp_path / "corpus.jsonl", docs)
    clean = _run_step(source, tmp_path / "clean", tasks=3, workers=1)
    real = staged.find_band_pairs

    def dies_on_band_5(work_dir, n_shards, band, rows, threshold):
        if band == 5:
            raise KeyboardInterrupt("killed")
        return real(work_dir, n_shards, band, rows, threshold)

    monkeypatch.setattr(staged, "find_band_pairs", dies_on_band_5)
    with pytest.raises(KeyboardInterrupt):
        _run_step(source, tmp_path / "killed", tasks=3, workers=1)
    assert not (tmp_path / "killed" / "minhash_dedup").exists()
    monkeypatch.setattr(staged, "find_band_pairs", real)
    rerun = _run_step(source, tmp_path / "killed", tasks=3, workers=1)
    assert _tree(rerun) == _tree(clean) and any(k.startswith("excluded/") for k in _tree(clean))


def test_staged_step_gives_the_same_files_for_any_worker_count_and_sharding(tmp_path):
    docs, planted = make_corpus(seed=5, n_base=150, targets=[0.95] * 20 + [0.9] * 20 + [0.4] * 20)
    source = _write_jsonl(tmp_path / "corpus.jsonl", docs)

    def run(name: str, tasks: int, workers: int) -> Path:
        return _run_step(source, tmp_path / name, tasks, workers)

    serial, parallel, resharded = run("serial", 3, 1), run("parallel", 3, 2), run("resharded", 2, 1)
    for sub in ("minhash_dedup", "excluded/minhash_dedup"):
        files = sorted(p.name for p in (serial / sub).iterdir())
        assert files == sorted(p.name for p in (parallel / sub).iterdir())
        for name in files:
            assert (serial / sub / name).read_bytes() == (parallel / sub / name).read_bytes()

    def excluded(root: Path) -> dict[str, str]:
        rows = [
            record for f in sorted((root / "excluded/minhash_dedup").glob("*.jsonl.zst")) for record in read_records(f)
        ]
        return {r["id"]: r["excluded_kept_id"] for r in rows}

    assert excluded(serial) == excluded(resharded)
    assert set(excluded(serial)) == {b if id_sort_key(b) > id_sort_key(a) else a for a, b, s in planted if s > 0.8}
    stats = json.loads((serial / "stats" / "minhash_dedup.json").read_text())
    assert stats["docs_in"] == len(docs) and stats["docs_excluded"] == 40
