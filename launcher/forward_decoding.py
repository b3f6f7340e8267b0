"""Greedy decoding by full forwards, for layouts whose forward cannot decode one token through a KV cache (tensor
parallel with sequence parallel, context parallel): the laid-out model runs the growing sequences whole each step.

Each step the rows (prompt + the tokens generated so far) are right-padded to the layout's scoring shape
(`TrainModule.scoring_shape`) and `TrainModule.next_tokens` gives the argmax after each row's last real token; in a
causal model the padding never reaches it, and a row's positions start at 0 as they would alone, so the tokens are
those of model.generation's KV-cache greedy on one process (which left-pads with a mask and per-row positions to
the same effect). Rows end as there: at their first stop id (kept), once `stop_when` says so, or after
max_new_tokens. The cost is a forward of the whole sequence per new token, which the evaluator's short generations
(a few dozen tokens) afford.

Every rank runs the same forwards: before each one the ranks agree whether any of them still has a running row
(an all-reduce); a rank with no prompts, or done early, runs a dummy forward while another still decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.distributed as dist


@torch.no_grad()
def decode_by_forwards(
    module,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
    pad_id: int = 0,
    stop_when: Optional[Callable[[list[list[int]]], list[bool]]] = None,
) -> list[list[int]]:
    """New tokens of each prompt (see the module docstring); `module` is the run's TrainModule."""
    if any(not prompt for prompt in prompts):
        raise ValueError("decode_by_forwards: every prompt needs at least one token")
    device = module.env.device
    stops = set(stop_ids)
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    step = 0
    while True:
        running = bool(prompts) and step < max_new_tokens and not all(finished)
        if not _any_rank(running, device):
            break
        rows = [prompt + out for prompt, out in zip(prompts, outputs)] or [[pad_id]]
        n_rows, width = module.scoring_shape(len(rows), max(len(row) for row in rows))
        tokens = torch.full((n_rows, width), pad_id, dtype=torch.long)
        at = torch.zeros(n_rows, dtype=torch.long)
        for index, row in enumerate(rows):
            tokens[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            at[index] = len(row) - 1
        chosen = module.next_tokens(tokens.to(device), at.to(device)).tolist()
        if running:
            for index in range(len(prompts)):
                if not finished[index]:
                    outputs[index].append(chosen[index])
                    finished[index] = chosen[index] in stops
            if stop_when is not None:
                finished = [done or stop for done, stop in zip(finished, stop_when(outputs))]
        step += 1
    return outputs


def _any_rank(flag: bool, device: torch.device) -> bool:
    """`flag` on any rank of the run (every rank calls this the same number of times)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
