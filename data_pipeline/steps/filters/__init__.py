"""Document filters with datatrove's contract (`filter(doc) -> True | (False, reason, details)`), one module per
rule family: Gopher quality and repetition (Rae et al. 2021), C4 (Raffel et al. 2020), FineWeb (Penedo et al. 2024)
and URL block lists. Each family's keyword arguments carry its published defaults (as datatrove and FineWeb set
them); `None` switches one rule off. `data_pipeline.steps.heuristics` chains the families in FineWeb's order.
"""
