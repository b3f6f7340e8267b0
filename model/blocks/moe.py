"""Mixture-of-experts feed-forward: a top-k router, dropless grouped experts, optional shared experts.

Routing covers the families Loom loads: softmax scores (Mixtral, Qwen-MoE, DeepSeek-V2) or sigmoid scores
(DeepSeek-V3); grouped top-k (experts split into groups, each token choosing among its best `topk_groups` groups,
a group scored by its best expert or its best two); renormalised top-k weights; a routed scaling factor; and
auxiliary-loss-free balancing, where a per-expert bias (`expert_bias`, a buffer, not trained by gradients) is
added to the scores only to choose the experts, and moved after each optimizer step against the measured load
(`update_expert_bias`; the Transformer gathers the loads of all its layers, see `Transformer.update_expert_biases`).
Shared experts run on every token, as one FFN num_shared times as wide, optionally scaled by sigmoid(gate(x))
(Qwen2-MoE).

Dispatch is dropless (no capacity factor): token-assignments are sorted by expert so each expert runs one matmul
over a contiguous slice. `GroupedExperts.forward(x_sorted, num_tokens_per_expert)` is the seam expert
parallelism wraps with all-to-all and tensor parallelism shards; everything before (routing, sorting) and after
(weighted scatter-add) stays local. The router losses are kept on the module for the enclosing Transformer to
collect (see `Transformer.forward`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from model.blocks.mlp import FeedForward
from model.config import MoEConfig

# The stacked expert weights, in gate, up, down order (E x dim x hidden, E x dim x hidden, E x hidden x dim): the
# names every parallel plan and checkpoint converter refers to.
EXPERT_WEIGHTS = ("w1", "w3", "w2")


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
    def __init__(self, dim: int, cfg: MoEConfig, hidden_dim: int, shared_hidden_dim: int = 0) -> None:
        """`hidden_dim`: one routed expert's width; `shared_hidden_dim`: all shared experts together (0: none)."""
        super().__init__()
        if not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(
                f"model.moe.top_k={cfg.top_k} must be between 1 and model.moe.num_experts={cfg.num_experts}"
            )
        self.cfg = cfg
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.norm_topk_prob = cfg.norm_topk_prob
        self.router = nn.Linear(dim, cfg.num_experts, bias=False)
        self.experts = GroupedExperts(dim, hidden_dim, cfg.num_experts)
        self.shared_experts = FeedForward(dim, shared_hidden_dim) if shared_hidden_dim > 0 else None
        self.shared_expert_gate = nn.Linear(dim, 1, bias=False) if cfg.shared_expert_gate else None
        # fp32 like the scores it shifts; persistent, so checkpoints and HF exports (DeepSeek-V3's
        # e_score_correction_bias) carry it.
        self.register_buffer(
            "expert_bias", torch.zeros(cfg.num_experts, dtype=torch.float32) if cfg.expert_bias else None
        )
        # Token-assignments per expert [E] routed by training forwards since the last balancing update; a plain
        # attribute, not a buffer, so data-parallel wrappers that broadcast buffers (DDP) keep each rank's own.
        self.tokens_per_expert: Optional[torch.Tensor] = None
        # Losses of the last forward, as graph-holding tensors until the Transformer collects (and clears) them.
        # The Transformer turns `record_losses` off after collecting, so an activation-checkpoint recomputation
        # during backward neither leaves a fresh graph hanging on the module nor counts its tokens twice.
        self.aux_loss: Optional[torch.Tensor] = None
        self.router_z_loss: Optional[torch.Tensor] = None
        self.record_losses = True
        # With `measure_router_entropy` (the launcher sets it at log steps, trainer.layer_health): the sum over
        # training forwards of the mean entropy (nats) of the tokens' routing distributions, and their count.
        self.measure_router_entropy = False
        self.router_entropy: Optional[tuple[torch.Tensor, int]] = None

    def reset_buffers(self) -> None:
        if self.expert_bias is not None:
            self.expert_bias.zero_()
        self.tokens_per_expert = None

    def take_load(self) -> torch.Tensor:
        """Token-assignments per expert [E] (fp32) since the last call, and restart the count."""
        load = self.tokens_per_expert
        self.tokens_per_expert = None
        if load is None:
            return torch.zeros(self.num_experts, dtype=torch.float32, device=self.router.weight.device)
        return load

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """fp32 routing scores [N, E] from router logits."""
        if self.cfg.score_func == "sigmoid":
            return torch.sigmoid(logits.float())
        return torch.softmax(logits, dim=-1, dtype=torch.float32)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, dim] -> router logits [N, E] (fp32), top-k weights [N, k] (in x's dtype), top-k expert ids [N, k]."""
        cfg = self.cfg
        # fp32 routing: the choice of experts should not flip with the compute dtype (DeepSeek/transformers do this).
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())
        scores = self.scores(logits)
        choice = scores + self.expert_bias if self.expert_bias is not None else scores
        if cfg.n_groups > 1:
            grouped = choice.view(choice.shape[0], cfg.n_groups, -1)
            if cfg.group_score == "max":
                group_scores = grouped.max(dim=-1).values
            else:
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            best_groups = torch.topk(group_scores, cfg.topk_groups, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
            choice = choice.masked_fill(~keep.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))
        experts = torch.topk(choice, self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
        return logits, weights.to(x.dtype), experts

    def load_balancing_loss(self, logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """Switch loss E * sum_i f_i * P_i: f_i the fraction of token-assignments sent to expert i, P_i the mean
        routing probability of expert i (sigmoid scores normalised per token). 1 for a perfectly balanced router."""
        probs = self.scores(logits)
        if self.cfg.score_func == "sigmoid":
            probs = probs / probs.sum(dim=-1, keepdim=True)
        counts = torch.bincount(experts.flatten(), minlength=self.num_experts).to(torch.float32)
        fraction = counts / experts.numel()
        return self.num_experts * torch.sum(fraction * probs.mean(dim=0))

    @torch.no_grad()
    def _measure_router_entropy(self, logits: torch.Tensor) -> None:
        """Add this forward's mean routing entropy (sigmoid scores normalised per token) to `router_entropy`."""
        probs = self.scores(logits)
        if self.cfg.score_func == "sigmoid":
            probs = probs / probs.sum(dim=-1, keepdim=True)
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1).mean()
        total, count = self.router_entropy if self.router_entropy is not None else (0.0, 0)
        self.router_entropy = (entropy + total, count + 1)

    @torch.no_grad()
    def update_expert_bias(self, load: torch.Tensor) -> None:
        """Move the selection bias against the measured load [E] (DeepSeek-V3's rule, kept zero-mean as torchtitan
        does): overloaded experts down by bias_update_rate, underloaded ones up."""
        if self.expert_bias is None or self.cfg.bias_update_rate == 0:
            return
        delta = self.cfg.bias_update_rate * torch.sign(load.mean() - load).to(self.expert_bias.dtype)
        self.expert_bias += delta - delta.mean()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits, weights, experts = self.route(x)
        flat_experts = experts.flatten()  # assignment a = token a // k, its (a % k)-th choice
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        # Always computed, so an activation-checkpoint recomputation saves exactly the tensors the forward did.
        aux_loss = self.load_balancing_loss(logits, experts)
        router_z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        if self.record_losses:
            self.aux_loss, self.router_z_loss = aux_loss, router_z_loss
            if self.training and self.measure_router_entropy:
                self._measure_router_entropy(logits)
            if self.training:
                counts32 = counts.detach().to(torch.float32)
                seen = self.tokens_per_expert
                self.tokens_per_expert = counts32 if seen is None else seen + counts32

        order = torch.argsort(flat_experts, stable=True)
        token_of_assignment = order // self.top_k
        expert_out = self.experts(x[token_of_assignment], counts)
        expert_out = expert_out * weights.flatten()[order].unsqueeze(-1)
        out = torch.zeros_like(x).index_add_(0, token_of_assignment, expert_out.to(x.dtype))
        if self.shared_experts is not None:
            shared = self.shared_experts(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out.reshape(shape)
