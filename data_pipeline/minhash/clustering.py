"""From band buckets to duplicate clusters: verified candidate pairs, connected components, the document kept.

Candidate pairs (same bucket in some band) are confirmed only when the estimated Jaccard similarity of the two
full signatures (fraction of equal values) reaches the threshold. Every pair inside a bucket is checked, so the
set of edges, and therefore the clusters, do not depend on the order documents arrive in (the price is
quadratic work in a bucket's size; exact duplicates, which make the big buckets, are removed by exact_dedup
first). Clusters are the connected components of the verified pairs, found with scipy's union-find based
`connected_components` rather than a hand-written union-find. Each cluster keeps its lowest id.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

_PAIR_CHUNK = 1 << 22  # signature values compared per chunk when verifying a large bucket


def id_sort_key(doc_id: str) -> tuple[int, int | str]:
    """Order ids numerically when they are decimal integers, else as strings (decimal ones first)."""
    return (0, int(doc_id)) if doc_id.isdecimal() else (1, doc_id)


def bucket_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Positions (into `keys`) of each group of two or more equal keys, each group sorted ascending."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [keys.size]])
    return [np.sort(order[s:e]) for s, e in zip(starts, ends) if e - s >= 2]


def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity: fraction of equal MinHash values (row-wise for 2-D inputs)."""
    return np.mean(sig_a == sig_b, axis=-1)


def verified_pairs(members: np.ndarray, signatures: np.ndarray, threshold: float) -> np.ndarray:
    """All pairs (members[i], members[j]), i < j, whose signatures agree on >= threshold of their values."""
    k = len(members)
    need = int(np.ceil(threshold * signatures.shape[1] - 1e-9))
    found = []
    rows_per_chunk = max(1, _PAIR_CHUNK // max(1, k * signatures.shape[1]))
    for lo in range(0, k, rows_per_chunk):
        hi = min(k, lo + rows_per_chunk)
        agree = (signatures[lo:hi, None, :] == signatures[None, :, :]).sum(axis=-1)
        i, j = np.nonzero(agree >= need)
        i = i + lo
        keep = i < j
        found.append(np.stack([members[i[keep]], members[j[keep]]], axis=1))
    return np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)


def band_pairs(keys: np.ndarray, fetch_signatures: Callable[[np.ndarray], np.ndarray], threshold: float) -> np.ndarray:
    """Verified pairs (global positions) among documents sharing a bucket key in one band."""
    pairs = [verified_pairs(g, fetch_signatures(g), threshold) for g in bucket_groups(keys)]
    pairs = [p for p in pairs if len(p)]
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), dtype=np.int64)


def components(n_docs: int, pairs: np.ndarray) -> np.ndarray:
    """Component label of each of `n_docs` documents given undirected edges `pairs` [m, 2]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n_docs, n_docs))
    _, labels = connected_components(graph, directed=False)
    return labels


def choose_kept(labels: np.ndarray, ids: Callable[[np.ndarray], Sequence[str]]) -> dict[int, tuple[int, int]]:
    """For every document in a cluster of two or more: position -> (position of the kept one, cluster size).

    The kept document is the one with the lowest id (`id_sort_key`); `ids(positions)` returns their ids.
    """
    counts = np.bincount(labels)
    in_cluster = np.flatnonzero(counts[labels] >= 2)
    result: dict[int, tuple[int, int]] = {}
    if in_cluster.size == 0:
        return result
    order = in_cluster[np.argsort(labels[in_cluster], kind="stable")]
    member_ids = list(ids(order))
    sorted_labels = labels[order]
    boundaries = np.flatnonzero(np.diff(sorted_labels)) + 1
    for group in np.split(np.arange(order.size), boundaries):
        kept = min(group, key=lambda i: id_sort_key(member_ids[i]))
        for i in group:
            result[int(order[i])] = (int(order[kept]), len(group))
    return result
