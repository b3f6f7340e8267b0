"""Which layers go on which pipeline stage, and which stages on which rank: pure arithmetic, no torch.

Kept apart from parallel/pipeline.py (which builds stages and schedules with torch.distributed.pipelining) so the
layout validation (parallel/dims.py) can check an explicit `parallel.pp_layer_split` before torch is imported.
The cut is balanced by the closed-form cost of each layer (model/counting.py: training FLOPs per token; MoE and
dense layers differ), with the output projection's cost on the last stage, unless `parallel.pp_layer_split` pins
it: `stage_layer_ranges` is that decision, used by the pipeline builder (parallel/pipeline.py) and by the memory
estimate (parallel/estimate.py), so both see the same split. With several stages per rank the stages go round
the ranks in a loop (interleaved schedules) or in a V (rank r holds stages r and 2*pp-1-r).
"""

from __future__ import annotations

from typing import Optional

from model.counting import attention_flops_per_token, layer_params
from parallel.config import PP_V_SCHEDULES, ParallelConfig


def layer_costs(model_cfg, seq_len: Optional[int] = None) -> list[float]:
    """Training FLOPs per token of each layer: 6 x active matmul params + its attention (model/counting.py's,
    which knows each layer's window and MLA's widths)."""
    seq_len = seq_len or model_cfg.max_seq_len
    return [
        6.0 * layer_params(model_cfg, i).active + attention_flops_per_token(model_cfg, seq_len, i)
        for i in range(model_cfg.n_layers)
    ]


def stage_layer_ranges(model_cfg, cfg: ParallelConfig, num_stages: int, seq_len: Optional[int] = None) -> list[range]:
    """The layers of each pipeline stage as training cuts them: `parallel.pp_layer_split` when given, else balanced
    by per-layer cost with the output projection (6 x vocab x dim per token) on the last stage. `seq_len` refines
    the attention part of the cost (None: model.max_seq_len)."""
    if cfg.pp_layer_split:
        return parse_layer_split(cfg.pp_layer_split, model_cfg.n_layers, num_stages)
    output_cost = 6.0 * model_cfg.vocab_size * model_cfg.dim
    return balanced_layer_split(layer_costs(model_cfg, seq_len), num_stages, last_stage_extra=output_cost)


def balanced_layer_split(costs: list[float], num_stages: int, last_stage_extra: float = 0.0) -> list[range]:
    """Contiguous ranges of layers, one per stage, minimising the most expensive stage.

    A small exact dynamic programme over (layers, stages): a greedy cut misplaces the boundary when costs are
    uneven (MoE every other layer, a heavy output head), and no library does this partition for us."""
    n = len(costs)
    if not 1 <= num_stages <= n:
        raise ValueError(f"cannot split {n} layers into {num_stages} pipeline stages: every stage needs a layer")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def stage_cost(start: int, end: int, stage: int) -> float:
        return prefix[end] - prefix[start] + (last_stage_extra if stage == num_stages - 1 else 0.0)

    inf = float("inf")
    # best[s][e]: the smallest max-stage cost placing layers [0, e) on stages [0, s]; cut[s][e] where stage s starts.
    best = [[inf] * (n + 1) for _ in range(num_stages)]
    cut = [[0] * (n + 1) for _ in range(num_stages)]
    for end in range(1, n + 1):
        best[0][end] = stage_cost(0, end, 0)
    for s in range(1, num_stages):
        for end in range(s + 1, n + 1):
            for start in range(s, end):
                value = max(best[s - 1][start], stage_cost(start, end, s))
                if value < best[s][end]:
                    best[s][end], cut[s][end] = value, start
    ranges, end = [], n
    for s in range(num_stages - 1, -1, -1):
        start = cut[s][end] if s > 0 else 0
        ranges.append(range(start, end))
        end = start
    return ranges[::-1]


def parse_layer_split(spec: str, n_layers: int, num_stages: int) -> list[range]:
    """'0-3,4-7' (inclusive ranges) -> [range(0, 4), range(4, 8)], checked to cover every layer once, in order."""
    ranges = []
    try:
        for part in spec.split(","):
            first, last = (int(x) for x in part.strip().split("-"))
            ranges.append(range(first, last + 1))
    except ValueError as exc:
        raise ValueError(f"parallel.pp_layer_split={spec!r}: expected inclusive ranges like '0-3,4-7'") from exc
    if len(ranges) != num_stages:
        raise ValueError(f"parallel.pp_layer_split={spec!r} has {len(ranges)} ranges for {num_stages} stages")
    expected = 0
    for r in ranges:
        if r.start != expected or len(r) == 0:
            raise ValueError(
                f"parallel.pp_layer_split={spec!r} must cover layers 0..{n_layers - 1} in order, each stage non-empty"
            )
        expected = r.stop
    if expected != n_layers:
        raise ValueError(f"parallel.pp_layer_split={spec!r} covers {expected} layers but model.n_layers={n_layers}")
    return ranges


def stage_ids_for_rank(pp_rank: int, pp: int, stages_per_rank: int, schedule: str) -> list[int]:
    """Which stages this pipeline rank holds: one; a loop (r, r+pp, ...); or a V (r, 2*pp-1-r). The schedule and
    stages-per-rank pair was checked by ParallelDims.from_config."""
    if schedule in PP_V_SCHEDULES:
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + i * pp for i in range(stages_per_rank)]
