"""MinHash near-duplicate detection: fast signatures, LSH banding, verified clusters, staged on disk.

Pure functions independent of the pipeline framework; data_pipeline/steps/minhash_dedup.py wraps them as a step.
"""

from data_pipeline.minhash.banding import band_keys, candidate_probability, detection_probability, optimal_bands
from data_pipeline.minhash.clustering import choose_kept, components, id_sort_key, similarity, verified_pairs
from data_pipeline.minhash.local import deduplicate
from data_pipeline.minhash.params import MinHashParams
from data_pipeline.minhash.signatures import MinHasher

__all__ = [
    "MinHasher",
    "MinHashParams",
    "band_keys",
    "candidate_probability",
    "choose_kept",
    "components",
    "deduplicate",
    "detection_probability",
    "id_sort_key",
    "optimal_bands",
    "similarity",
    "verified_pairs",
]
