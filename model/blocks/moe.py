"""Mixture-of-experts feed-forward: top-k softmax router, dropless grouped experts, optional shared experts.

Dispatch is dropless (no capacity factor): token-assignments are sorted by expert so each expert runs one matmul
over a contiguous slice. `GroupedExperts.forward(x_sorted, num_tokens_per_expert)` is the seam expert
parallelism wraps with all-to-all; everything before (routing, sorting) and after (weighted scatter-add) stays local.
The router losses are kept on the module for the enclosing Transformer to collect (see `Transformer.forward`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks.mlp import FeedForward


class GroupedExperts(nn.Module):
    """E SwiGLU experts stored as stacked weights w1/w3 [E, hidden, dim], w2 [E, dim, hidden]."""

    def __init__(self, dim: int, hidden_dim: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))

    def forward(self, x_sorted: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
        """x_sorted [N, dim] grouped by expert (expert 0's tokens first); counts LongTensor [E] -> [N, dim]."""
        # A loop over experts (not tokens): each is one dense matmul. torch._grouped_mm would fuse these, but
        # it is private, GPU-only and missing from torch 2.11's CPU build.
        outputs = []
        for e, x_e in enumerate(torch.split(x_sorted, num_tokens_per_expert.tolist(), dim=0)):
            h = F.silu(x_e @ self.w1[e].t()) * (x_e @ self.w3[e].t())
            outputs.append(h @ self.w2[e].t())
        return torch.cat(outputs, dim=0)


class MoE(nn.Module):
    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        top_k: int,
        *,
        norm_topk_prob: bool = True,
        num_shared_experts: int = 0,
        shared_hidden_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"model.moe.top_k={top_k} must be between 1 and model.moe.num_experts={num_experts}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.experts = GroupedExperts(dim, hidden_dim, num_experts)
        # DeepSeek implements its shared experts as one MLP num_shared times as wide; same here.
        shared_hidden = (shared_hidden_dim or hidden_dim) * num_shared_experts
        self.shared_experts = FeedForward(dim, shared_hidden) if num_shared_experts > 0 else None
        # Losses of the last forward, as graph-holding tensors until the Transformer collects (and clears) them.
        # The Transformer turns `record_losses` off after collecting, so an activation-checkpoint recomputation
        # during backward does not leave a fresh graph hanging on the module until the next step.
        self.aux_loss: Optional[torch.Tensor] = None
        self.router_z_loss: Optional[torch.Tensor] = None
        self.record_losses = True

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, dim] -> router logits [N, E], top-k weights [N, k] (in x's dtype), top-k expert ids [N, k]."""
        logits = self.router(x)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(x.dtype), experts

    def load_balancing_loss(self, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Switch loss E * sum_i f_i * P_i: f_i the fraction of token-assignments sent to expert i, P_i the mean
        router probability of expert i. Equals 1 for a perfectly balanced router."""
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        counts = torch.bincount(experts.flatten(), minlength=self.num_experts).to(torch.float32)
        fraction = counts / experts.numel()
        return self.num_experts * torch.sum(fraction * probs.mean(dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, weights, experts = self.route(x)
        # Always computed, so an activation-checkpoint recomputation saves exactly the tensors the forward did.
        aux_loss = self.load_balancing_loss(logits, experts)
        router_z_loss = torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        if self.record_losses:
            self.aux_loss, self.router_z_loss = aux_loss, router_z_loss

        flat_experts = experts.flatten()  # assignment a = token a // k, its (a % k)-th choice
        order = torch.argsort(flat_experts, stable=True)
        token_of_assignment = order // self.top_k
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        expert_out = self.experts(x[token_of_assignment], counts)
        expert_out = expert_out * weights.flatten()[order].unsqueeze(-1)
        out = torch.zeros_like(x).index_add_(0, token_of_assignment, expert_out.to(x.dtype))
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.reshape(shape)
