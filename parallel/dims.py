"""Parallel degrees, checked once against the world size and the model, and the DeviceMesh they imply.

Every other part of `parallel` (and the launcher) asks this object which ranks it talks to, so a bad layout is
caught here, before any process group is built or any weight is allocated, with a message that names the key to
change. The mesh always carries every named dimension ("pp", "dp_replicate", "dp_shard", "cp", "tp"), size 1
where unused, plus torchtitan's flattened views ("dp", "dp_shard_cp", "dp_cp", and "ep" when expert parallel is
on), so callers can slice by name without first asking whether a dimension is enabled.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from model.config import ModelConfig
    from parallel.config import ParallelConfig

_CHOICES = {
    "engine": ("torch", "deepspeed"),
    "ac_mode": ("none", "full", "selective"),
    "cp_method": ("ring", "ulysses"),
    "fsdp_param_dtype": ("float32", "bfloat16", "float16"),
    "fsdp_reduce_dtype": ("float32", "bfloat16", "float16"),
    "pp_schedule": ("GPipe", "1F1B", "Interleaved1F1B", "ZBVZeroBubble", "InterleavedZeroBubble"),
    "compile_backend": ("inductor", "aot_eager", "eager"),
}
_SELECTIVE_OPS = ("mm", "sdpa")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int
    pp: int
    ep: int
    world_size: int
    # parallel.dp_shard=-1 on one process: FSDP2 over a 1-rank mesh rather than no FSDP at all, so an FSDP config
    # keeps its mixed-precision policy (bf16 params, fp32 master weights and reduction) and CPU offload on one
    # GPU, and one device runs the very code path that N devices run.
    fsdp_one_rank: bool = False
    # Flattened sub-meshes made by build_mesh, kept here because slicing them back out of the root mesh is
    # deprecated from torch 2.11 on ("users need to bookkeep the flattened mesh directly").
    _flat: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ construction and validation
    @classmethod
    def from_config(
        cls,
        cfg: "ParallelConfig",
        world_size: int,
        model_cfg: Optional["ModelConfig"] = None,
        seq_len: Optional[int] = None,
    ) -> "ParallelDims":
        """Resolve `dp_shard=-1` and validate; raises ValueError naming the `parallel.*` key and the fix."""
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        _check_options(cfg)
        for key in ("cp", "tp", "pp", "ep"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"parallel.{key}={getattr(cfg, key)} must be >= 1")
        dp_replicate, dp_shard = cfg.dp_replicate, cfg.dp_shard
        if dp_replicate == -1:  # plain DDP configs: replicate over whatever the others leave
            if dp_shard == -1:
                raise ValueError("parallel.dp_replicate and parallel.dp_shard cannot both be -1: fix one of them")
            rest = dp_shard * cfg.cp * cfg.tp * cfg.pp
            if dp_shard < 1 or world_size % rest != 0:
                raise ValueError(
                    f"world size {world_size} is not divisible by parallel.dp_shard*cp*tp*pp = {rest}: launch a "
                    f"multiple of {rest} processes or change those degrees"
                )
            dp_replicate = world_size // rest
        elif dp_replicate < 1:
            raise ValueError(f"parallel.dp_replicate={dp_replicate} must be >= 1, or -1 for the rest of the world size")
        others = dp_replicate * cfg.cp * cfg.tp * cfg.pp
        if dp_shard == -1:
            if world_size % others != 0:
                raise ValueError(
                    f"world size {world_size} is not divisible by parallel.dp_replicate*cp*tp*pp = "
                    f"{dp_replicate}*{cfg.cp}*{cfg.tp}*{cfg.pp} = {others}: launch a multiple of {others} "
                    f"processes or lower those degrees"
                )
            dp_shard = world_size // others
        elif dp_shard < 1:
            raise ValueError(f"parallel.dp_shard={dp_shard} must be >= 1, or -1 for the rest of the world size")
        product = others * dp_shard
        if product != world_size:
            raise ValueError(
                f"parallel degrees multiply to {product} (dp_replicate={dp_replicate} * dp_shard={dp_shard} * "
                f"cp={cfg.cp} * tp={cfg.tp} * pp={cfg.pp}) but the world size is {world_size}: launch {product} "
                f"processes, or change the degrees (parallel.dp_shard=-1 takes whatever the others leave)"
            )
        fsdp_one_rank = world_size == 1 and cfg.dp_shard == -1 and cfg.engine == "torch"
        dims = cls(dp_replicate, dp_shard, cfg.cp, cfg.tp, cfg.pp, cfg.ep, world_size, fsdp_one_rank)
        dims._check_engine(cfg)
        dims._check_expert_parallel()
        if model_cfg is not None:
            dims._check_model(cfg, model_cfg, seq_len)
        return dims

    def _check_engine(self, cfg: "ParallelConfig") -> None:
        if cfg.engine == "deepspeed":
            if cfg.zero_stage not in (1, 2, 3):
                raise ValueError(
                    f"parallel.zero_stage={cfg.zero_stage} with parallel.engine=deepspeed: set it to 1, 2 or 3"
                )
            if self.tp > 1 or self.cp > 1 or self.pp > 1 or self.ep > 1 or self.dp_replicate > 1:
                raise ValueError(
                    "parallel.engine=deepspeed runs pure ZeRO data parallel: set parallel.tp, cp, pp, ep and "
                    "dp_replicate to 1 and parallel.dp_shard=-1 (or use engine=torch for FSDP2 with TP/CP/PP)"
                )
        elif cfg.zero_stage != 0 or cfg.zero_offload:
            raise ValueError(
                f"parallel.zero_stage={cfg.zero_stage} / zero_offload={cfg.zero_offload} need "
                f"parallel.engine=deepspeed (engine=torch uses FSDP2: set zero_stage=0 and zero_offload=false)"
            )
        if not self.fsdp_enabled or cfg.engine != "torch":
            for key, default in (("fsdp_cpu_offload", False), ("fsdp_param_dtype", "float32"),
                                 ("fsdp_reduce_dtype", "float32")):
                if getattr(cfg, key) != default:
                    raise ValueError(
                        f"parallel.{key}={getattr(cfg, key)} is an FSDP2 option but this layout does not use FSDP: "
                        f"set parallel.dp_shard=-1 (or > 1) with engine=torch, or leave {key}={default} (for mixed "
                        f"precision without FSDP use trainer.precision=bf16)"
                    )

    def _check_expert_parallel(self) -> None:
        # Expert parallel borrows ranks from dp_shard x cp (torchtitan's layout): ep = dp_shard_in_ep * cp.
        if self.ep == 1:
            return
        if self.ep % self.cp != 0 or (self.dp_shard * self.cp) % self.ep != 0:
            raise ValueError(
                f"parallel.ep={self.ep} must be a multiple of parallel.cp={self.cp} and divide "
                f"dp_shard*cp={self.dp_shard * self.cp}: experts are spread over data-parallel shard (and context) "
                f"ranks; raise parallel.dp_shard or lower parallel.ep"
            )

    def _check_model(self, cfg: "ParallelConfig", model_cfg: "ModelConfig", seq_len: Optional[int]) -> None:
        from model.config import ModelConfig

        model_cfg = ModelConfig.coerce(model_cfg)  # a Hydra node or dict normalised once, nested sections included
        tp = self.tp
        if tp > 1:
            for key, value in (
                ("n_heads", model_cfg.n_heads),
                ("n_kv_heads", model_cfg.kv_heads),
                ("vocab_size", model_cfg.vocab_size),
                ("ffn hidden dim", model_cfg.ffn_hidden_dim),
            ):
                if value % tp != 0:
                    raise ValueError(
                        f"model {key}={value} is not divisible by parallel.tp={tp}: tensor parallel splits it "
                        f"evenly across ranks; pick a tp that divides it"
                    )
            if model_cfg.pos_embedding in ("learned", "alibi"):
                raise ValueError(
                    f"tensor parallel does not support model.pos_embedding={model_cfg.pos_embedding}: "
                    f"use rope or none, or parallel.tp=1"
                )
            if model_cfg.moe is not None:
                if self.ep > 1:
                    raise ValueError("tensor parallel together with expert parallel is not supported: set "
                                     "parallel.tp=1 or parallel.ep=1")
                if model_cfg.moe.aux_loss_weight > 0 or model_cfg.moe.router_z_loss_weight > 0:
                    raise ValueError(
                        "tensor parallel computes the loss outside the model (on vocab-sharded logits), without the "
                        "MoE router losses: set model.moe.aux_loss_weight=0 and model.moe.router_z_loss_weight=0 "
                        "(model.moe.expert_bias balances without a loss), or parallel.tp=1")
                for key, value in (("moe expert width", model_cfg.expert_hidden_dim),
                                   ("moe shared-experts width", model_cfg.shared_experts_hidden_dim)):
                    if value % tp != 0:
                        raise ValueError(f"model {key}={value} is not divisible by parallel.tp={tp}: tensor "
                                         f"parallel splits it evenly across ranks; pick a tp that divides it")
            if model_cfg.qk_norm and model_cfg.qk_norm_scope == "full" and model_cfg.mla is None:
                raise ValueError("tensor parallel of full-width QK-norm (model.qk_norm_scope=full, OLMo 2) is not "
                                 "supported: it normalises over every head's features; use parallel.tp=1")
        stages = self.pp * (cfg.pp_stages_per_rank if self.pp > 1 else 1)
        if stages > model_cfg.n_layers:
            raise ValueError(
                f"parallel.pp={self.pp} x pp_stages_per_rank={cfg.pp_stages_per_rank} = {stages} pipeline stages but "
                f"model.n_layers={model_cfg.n_layers}: every stage needs at least one layer; lower parallel.pp"
            )
        if self.ep > 1:
            if model_cfg.moe is None:
                raise ValueError(f"parallel.ep={self.ep} needs an MoE model (model.moe is null): set parallel.ep=1")
            num_experts = model_cfg.moe.num_experts
            if num_experts % self.ep != 0:
                raise ValueError(
                    f"model.moe.num_experts={num_experts} is not divisible by parallel.ep={self.ep}: change one"
                )
        if self.cp > 1 and model_cfg.rope_scaling.depends_on_length:
            raise ValueError(
                f"context parallel with model.rope_scaling.type={model_cfg.rope_scaling.type}: its frequencies depend "
                f"on the longest position of a forward, which each cp rank sees differently; use parallel.cp=1"
            )
        if self.cp > 1 and seq_len is not None:
            chunks = 2 * self.cp if cfg.cp_load_balance else self.cp
            if seq_len % chunks != 0:
                raise ValueError(
                    f"sequence length {seq_len} is not divisible by {chunks} "
                    f"({'2*' if cfg.cp_load_balance else ''}parallel.cp={self.cp}): context parallel splits each "
                    f"sequence into that many equal chunks; change the sequence length or parallel.cp"
                )

    # ------------------------------------------------------------------ degrees
    @property
    def dp_degree(self) -> int:
        """Number of distinct data slices: ranks that differ only in tp/cp/pp read the same data."""
        return self.dp_replicate * self.dp_shard

    @property
    def ddp_enabled(self) -> bool:
        """torch DDP: only pure replication, since DDP does not take DTensor (TP/EP) parameters."""
        return self.dp_replicate > 1 and self.dp_shard * self.cp == 1 and self.tp == 1 and self.ep == 1

    @property
    def fsdp_enabled(self) -> bool:
        """FSDP2: sharding over dp_shard x cp, or replication of a TP/EP model through the HSDP mesh."""
        return self.dp_shard * self.cp > 1 or (self.dp_replicate > 1 and not self.ddp_enabled) or self.fsdp_one_rank

    @property
    def needs_mesh(self) -> bool:
        """True when the layout needs a process group and a DeviceMesh: several ranks, or FSDP on one."""
        return self.world_size > 1 or self.fsdp_one_rank

    @property
    def hsdp_enabled(self) -> bool:
        return self.dp_replicate > 1 and self.fsdp_enabled

    def dp_rank(self, mesh: Optional["DeviceMesh"]) -> int:
        """Index of the data-parallel slice this rank reads (0..dp_degree-1)."""
        if mesh is None or self.dp_degree == 1:
            return 0
        return self.submesh(mesh, "dp").get_local_rank()

    def submesh(self, mesh: "DeviceMesh", name: str) -> "DeviceMesh":
        """1-D mesh by name: a real dimension ("tp", "cp", ...) or a flattened one ("dp", "dp_shard_cp", "dp_cp",
        "ep", and "dp_shard" when ep > 1)."""
        if name in self._flat:
            return self._flat[name]
        return mesh[name]

    # ------------------------------------------------------------------ mesh
    def build_mesh(self, device_type: str) -> Optional["DeviceMesh"]:
        """World DeviceMesh with every named dimension; None for a single process with nothing to lay out (one
        process with FSDP gets a 1-rank mesh: initialise a 1-rank process group first)."""
        if not self.needs_mesh:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        if self.ep > 1:
            in_ep = self.ep // self.cp
            names = ("pp", "dp_replicate", "dp_shard_mod_ep", "dp_shard_in_ep", "cp", "tp")
            sizes = (self.pp, self.dp_replicate, self.dp_shard // in_ep, in_ep, self.cp, self.tp)
            shard_dims: tuple[str, ...] = ("dp_shard_mod_ep", "dp_shard_in_ep")
        else:
            names = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
            sizes = (self.pp, self.dp_replicate, self.dp_shard, self.cp, self.tp)
            shard_dims = ("dp_shard",)
        mesh = init_device_mesh(device_type, sizes, mesh_dim_names=names)
        # Flattened views (DeviceMesh._flatten is what torchtitan uses; there is no public equivalent in 2.11).
        flat = {
            "dp": ("dp_replicate", *shard_dims),
            "dp_shard_cp": (*shard_dims, "cp"),
            "dp_cp": ("dp_replicate", *shard_dims, "cp"),
        }
        if self.ep > 1:
            flat.update(dp_shard=shard_dims, ep=("dp_shard_in_ep", "cp"))
        self._flat.clear()
        for name, parts in flat.items():
            self._flat[name] = mesh[parts]._flatten(mesh_dim_name=name)
        return mesh


def _check_options(cfg: "ParallelConfig") -> None:
    for key, allowed in _CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ValueError(f"parallel.{key}={value!r} is not one of {list(allowed)}")
    if cfg.ac_every < 1:
        raise ValueError(f"parallel.ac_every={cfg.ac_every} must be >= 1 (checkpoint every k-th block)")
    ops = [op.strip() for op in cfg.ac_selective_ops.split(",") if op.strip()]
    bad = [op for op in ops if op not in _SELECTIVE_OPS]
    if bad or not ops:
        raise ValueError(
            f"parallel.ac_selective_ops={cfg.ac_selective_ops!r}: give a comma-separated subset of "
            f"{list(_SELECTIVE_OPS)}"
        )
    if cfg.pp_microbatches < 1 or cfg.pp_stages_per_rank < 1:
        raise ValueError("parallel.pp_microbatches and parallel.pp_stages_per_rank must be >= 1")
    # The schedule decides how many stages a rank holds (parallel/pipeline.py stage_ids_for_rank says the same at
    # build time; checked here too so the launcher refuses it before starting any process group).
    if cfg.pp > 1:
        stages = cfg.pp_stages_per_rank
        if cfg.pp_schedule in ("GPipe", "1F1B") and stages != 1:
            raise ValueError(
                f"parallel.pp_schedule={cfg.pp_schedule} runs one stage per rank but parallel.pp_stages_per_rank="
                f"{stages}: set pp_stages_per_rank=1, or use Interleaved1F1B / InterleavedZeroBubble for several"
            )
        if cfg.pp_schedule == "ZBVZeroBubble" and stages != 2:
            raise ValueError(
                f"parallel.pp_schedule=ZBVZeroBubble places two stages per rank in a V but parallel."
                f"pp_stages_per_rank={stages}: set pp_stages_per_rank=2"
            )
