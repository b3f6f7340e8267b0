"""DPO's loss math (trainer.objective=dpo): pure functions of logits and log-probabilities, no model, no layout.

Definitions follow TRL 1.16's DPOTrainer (trl/trainer/dpo_trainer.py, `_compute_loss`), so a batch gives TRL's
loss and metrics:
- a sequence's log-probability is the sum of log p(token | prefix) over its response tokens (the prompt and the
  padding are not scored);
- chosen/rejected log-ratios: policy minus reference log-probability of each side; rewards: beta times them;
  margin: chosen reward minus rejected reward; accuracy: the share of pairs whose chosen reward is the larger;
- `sigmoid` (Rafailov et al.): -logsigmoid(beta * (chosen log-ratio - rejected log-ratio)). TRL 1.16 applies no
  label smoothing here (its `robust` loss has it), and neither does this;
- `ipo` (Azar et al., eq. 17): (d - 1 / (2 beta))^2 where d is the difference of the log-ratios each divided by its
  response's token count (TRL's length normalisation, agreed with the IPO authors);
- the loss of a batch is the mean over its pairs.

The batch layout (`pack_pairs`): an int64 tensor [pairs, length + 1, 2, 2] - per pair, per position, per side
(chosen, rejected), the token id and whether that token is scored (a response token). It is position-major so the
training loop's `batch[:, :-1]` / `batch[:, 1:]` give the inputs and the targets of every side as for plain
language modelling; `sides` turns them into TRL's [chosen rows; rejected rows] and the targets with -100 where
nothing is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from launcher.config import DPO_LOSS_TYPES

IGNORE_INDEX = -100


def pack_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], length: int, pad_id: int) -> torch.Tensor:
    """[pairs, length, 2, 2] int64 from (prompt, chosen, rejected) ids: prompt + response of each side, cut to
    `length` tokens (the start kept, as TRL's keep_start), right-padded with `pad_id` (never scored)."""
    out = np.zeros((len(pairs), length, 2, 2), dtype=np.int64)
    out[..., 0] = pad_id
    for row, (prompt, *responses) in enumerate(pairs):
        for side, response in enumerate(responses):
            ids = np.concatenate([prompt, response])[:length]
            out[row, : len(ids), side, 0] = ids
            out[row, len(prompt) : len(ids), side, 1] = 1
    return torch.from_numpy(out)


def sides(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [2P, T], targets [2P, T]) of a batch's inputs and labels ([P, T, 2, 2] each: `batch[:, :-1]`,
    `batch[:, 1:]`): chosen rows first, then rejected; targets -100 where the token is not scored."""

    def rows(x: torch.Tensor) -> torch.Tensor:
        return x.permute(2, 0, 1).reshape(-1, x.shape[1])

    tokens = rows(inputs[..., 0])
    targets = rows(labels[..., 0]).masked_fill(rows(labels[..., 1]) == 0, IGNORE_INDEX)
    return tokens, targets


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N]: the summed float32 log-probability of each row's scored targets (logits [N, T, V], targets [N, T] with
    -100 where not scored)."""
    scored = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (picked * scored).sum(dim=-1)


@dataclass
class DPOResult:
    loss: torch.Tensor  # mean over the pairs (differentiable through the policy log-probabilities)
    figures: dict[str, torch.Tensor]  # detached means over the pairs, named as logged (dpo/...)


def dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    response_tokens: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
) -> DPOResult:
    """The DPO loss and figures of a batch from per-row summed log-probabilities [2P] (chosen rows first) of the
    policy and the reference, and each row's count of scored tokens [2P] (for ipo's normalisation)."""
    chosen, rejected = policy_logps.chunk(2)
    ref_chosen, ref_rejected = reference_logps.chunk(2)
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if loss_type == "sigmoid":
        per_pair = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        chosen_len, rejected_len = response_tokens.float().clamp(min=1.0).chunk(2)
        per_pair = (chosen_ratio / chosen_len - rejected_ratio / rejected_len - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"dpo.loss_type={loss_type!r}: one of {DPO_LOSS_TYPES}")
    rewards_chosen, rewards_rejected = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    figures = {
        "dpo/rewards_chosen": rewards_chosen.mean(),
        "dpo/rewards_rejected": rewards_rejected.mean(),
        "dpo/margins": (rewards_chosen - rewards_rejected).mean(),
        "dpo/accuracy": (rewards_chosen > rewards_rejected).float().mean(),
        "dpo/logps_chosen": chosen.detach().mean(),
        "dpo/logps_rejected": rejected.detach().mean(),
    }
    return DPOResult(per_pair.mean(), figures)
