"""The harness's training step for pipeline parallel: the schedule runs forward and backward, the loss lives on
the last stage, and the full parameters are gathered from every stage.

Kept apart from harness.py because it is the only layout whose "model" is a `parallel.pipeline.Pipeline`
(several stage modules and a schedule) rather than one module.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from harness import Strategy


class PipelineStrategy(Strategy):
    def setup(self, spec, net, dims, pcfg, mesh):
        from parallel import parallelize

        if spec.grad_clip > 0:  # the norm would have to be reduced over the pp ranks too; not done here
            raise ValueError("PipelineStrategy does not clip gradients: set RunSpec.grad_clip=0")
        self.dims, self.pcfg, self.mesh, self.model_cfg = dims, pcfg, mesh, spec.model_config()
        self.pipeline = parallelize(net, dims, pcfg, model_cfg=self.model_cfg, mesh=mesh)
        self.optimizer = torch.optim.AdamW(
            list(self.pipeline.parameters()), lr=spec.lr, betas=spec.betas, eps=spec.eps,
            weight_decay=spec.weight_decay, foreach=False,
        )
        return self.pipeline

    def train_step(self, spec, tokens, labels) -> float:
        from parallel import loss_context

        tokens, labels = self.local_batch(tokens, labels)
        self.optimizer.zero_grad(set_to_none=True)
        with loss_context(self.dims, self.pcfg):
            loss = self.pipeline.step(tokens, labels)
        self.optimizer.step()
        # Only the rank with the last stage has the loss: sum over the pp group with zeros elsewhere.
        value = torch.zeros(1, dtype=torch.float64)
        if loss is not None:
            value += float(loss)
        dist.all_reduce(value, group=self.dims.submesh(self.mesh, "pp").get_group())
        return self.average_over_dp(float(value))

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        local = {}
        for stage in self.pipeline.stages:
            sd = get_model_state_dict(stage, options=StateDictOptions(full_state_dict=True))
            local.update({k: v.detach().clone() for k, v in sd.items()})
        gathered = [None] * self.dims.submesh(self.mesh, "pp").size()
        dist.all_gather_object(gathered, local, group=self.dims.submesh(self.mesh, "pp").get_group())
        merged = {}
        for part in gathered:
            merged.update(part)
        return merged
