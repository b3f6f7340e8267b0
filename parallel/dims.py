"""Parallel degrees, every layout rule, and the DeviceMesh they imply.

`ParallelDims.from_config` is the one validation pass of a layout: it resolves `-1` degrees against the world
size and checks every rule that ties the `parallel.*` keys to each other, to the model, the sequence length and
the precision (divisibility, DeepSpeed's limits, pipeline schedules, what pipeline/tensor/expert parallel cannot
carry). It imports no torch and builds nothing, so the launcher runs it before any process group or model exists
and a bad layout fails in about a second with a message naming the key to change. The code that builds a layout
(parallel/pipeline.py, fsdp.py, ...) trusts it and only builds.

The dims then own the layout's DeviceMesh (`build_mesh`, once): it carries every named dimension ("pp",
"dp_replicate", "dp_shard", "cp", "tp"), size 1 where unused, plus torchtitan's flattened views ("dp",
"dp_shard_cp", "dp_cp", and "ep" when expert parallel is on), so callers slice by name (`dims.submesh("tp")`)
without asking whether a dimension is enabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Optional

from parallel.config import (
    AC_SELECTIVE_OPS,
    CHOICES,
    PP_SINGLE_STAGE_SCHEDULES,
    PP_V_SCHEDULES,
    PP_ZERO_BUBBLE_SCHEDULES,
    ParallelConfig,
)
from parallel.stage_plan import parse_layer_split

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from model.config import ModelConfig


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
    cfg: ParallelConfig = field(default_factory=ParallelConfig, compare=False, repr=False)
    # The mesh and its flattened sub-meshes, made once by build_mesh (slicing flattened dims back out of the root
    # mesh is deprecated from torch 2.11 on: "users need to bookkeep the flattened mesh directly").
    _meshes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ construction and every rule
    @classmethod
    def from_config(
        cls,
        cfg: ParallelConfig,
        world_size: int,
        model_cfg: Optional["ModelConfig"] = None,
        seq_len: Optional[int] = None,
        precision: Optional[str] = None,
    ) -> "ParallelDims":
        """Resolve `-1` degrees and check every layout rule; raises ValueError naming the key and the fix.

        An all-ones torch layout (parallel=single, the default) on N > 1 processes means plain DDP over all of
        them, so the same command works under torchrun."""
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        _check_options(cfg)
        if (
            world_size > 1
            and cfg.engine == "torch"
            and all(d == 1 for d in (cfg.dp_replicate, cfg.dp_shard, cfg.cp, cfg.tp, cfg.pp))
        ):
            cfg = replace(cfg, dp_replicate=world_size)
        dp_replicate, dp_shard = _resolve_data_parallel(cfg, world_size)
        fsdp_one_rank = world_size == 1 and cfg.dp_shard == -1 and cfg.engine == "torch"
        dims = cls(dp_replicate, dp_shard, cfg.cp, cfg.tp, cfg.pp, cfg.ep, world_size, fsdp_one_rank, cfg)
        dims._check_engine()
        dims._check_expert_parallel()
        dims._check_pipeline(precision)
        if model_cfg is not None:
            dims._check_model(model_cfg, seq_len)
        return dims

    def _check_engine(self) -> None:
        cfg = self.cfg
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
        if cfg.float8 != "none" and (self.tp > 1 or cfg.engine == "deepspeed"):
            raise ValueError(
                f"parallel.float8={cfg.float8} is not wired to tensor parallel (it needs torchao's float8 TP plans) "
                f"or DeepSpeed (its engine keeps its own copies of the modules): set parallel.float8=none, or use "
                f"tp=1 with engine=torch"
            )
        if not self.fsdp_enabled or cfg.engine != "torch":
            defaults = ParallelConfig()
            for key in ("fsdp_cpu_offload", "fsdp_param_dtype", "fsdp_reduce_dtype"):
                if getattr(cfg, key) != getattr(defaults, key):
                    raise ValueError(
                        f"parallel.{key}={getattr(cfg, key)} is an FSDP2 option but this layout does not use FSDP: "
                        f"set parallel.dp_shard=-1 (or > 1) with engine=torch, or leave {key}="
                        f"{getattr(defaults, key)} (for mixed precision without FSDP use trainer.precision=bf16)"
                    )

    def _check_expert_parallel(self) -> None:
        # Expert parallel borrows ranks from dp_shard x cp (torchtitan's layout): ep = dp_shard_in_ep * cp.
        if self.ep == 1:
            return
        if self.dp_replicate > 1:
            raise ValueError(
                "expert parallel with dp_replicate > 1 (HSDP/DDP) is not supported: set parallel.dp_replicate=1"
            )
        if self.ep % self.cp != 0 or (self.dp_shard * self.cp) % self.ep != 0:
            raise ValueError(
                f"parallel.ep={self.ep} must be a multiple of parallel.cp={self.cp} and divide "
                f"dp_shard*cp={self.dp_shard * self.cp}: experts are spread over data-parallel shard (and context) "
                f"ranks; raise parallel.dp_shard or lower parallel.ep"
            )

    def _check_pipeline(self, precision: Optional[str]) -> None:
        cfg = self.cfg
        if self.pp == 1:
            return
        stages = cfg.pp_stages_per_rank
        # torch's schedules check these when they are built, i.e. after the process groups: checked here first.
        micro = cfg.pp_microbatches
        if cfg.pp_schedule == "1F1B" and micro < self.pp:
            raise ValueError(
                f"parallel.pp_schedule=1F1B needs parallel.pp_microbatches={micro} >= parallel.pp="
                f"{self.pp} (one microbatch in flight per stage): raise pp_microbatches"
            )
        rounds = max(1, micro // self.pp)
        if stages > 1 and cfg.pp_schedule not in PP_V_SCHEDULES and micro % rounds != 0:
            raise ValueError(
                f"parallel.pp_schedule={cfg.pp_schedule} runs microbatches in rounds of parallel.pp={self.pp}: "
                f"parallel.pp_microbatches={micro} must be a multiple of {rounds} rounds; use a multiple of "
                f"{self.pp}"
            )
        if self.cp > 1:  # stages get no positions argument, so RoPE would see chunk-local positions
            raise ValueError("parallel.pp > 1 with parallel.cp > 1 is not supported: set one of them to 1")
        if cfg.pp_schedule in PP_ZERO_BUBBLE_SCHEDULES and (self.fsdp_enabled or self.ddp_enabled or self.tp > 1):
            # Measured through the launcher on torch 2.13 (4 CPU ranks): with FSDP on the stages both schedules
            # train with other gradients than one process (step-1 grad norm 0.488 vs 0.651), with tensor parallel
            # they fail in the input backward ("Can't detach views in-place"); DDP is pytorch/pytorch#144530.
            raise ValueError(
                f"parallel.pp_schedule={cfg.pp_schedule} splits the backward into input and weight passes, which "
                f"torch's pipelining does not combine with data parallel (FSDP/DDP) or tensor parallel stages: use "
                f"pp_schedule=Interleaved1F1B (or 1F1B), or pipeline parallel alone"
            )
        if precision == "fp16":
            raise ValueError(
                "trainer.precision=fp16 (dynamic loss scaling) is not supported with parallel.pp > 1: "
                "use trainer.precision=bf16 or fp32"
            )

    def _check_model(self, model_cfg: "ModelConfig", seq_len: Optional[int]) -> None:
        from model.config import ModelConfig

        model_cfg = ModelConfig.coerce(model_cfg)  # a Hydra node or dict normalised once, nested sections included
        cfg, tp = self.cfg, self.tp
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
                    raise ValueError(
                        "tensor parallel together with expert parallel is not supported: set "
                        "parallel.tp=1 or parallel.ep=1"
                    )
                if model_cfg.moe.aux_loss_weight > 0 or model_cfg.moe.router_z_loss_weight > 0:
                    raise ValueError(
                        "tensor parallel computes the loss outside the model (on vocab-sharded logits), without the "
                        "MoE router losses: set model.moe.aux_loss_weight=0 and model.moe.router_z_loss_weight=0 "
                        "(model.moe.expert_bias balances without a loss), or parallel.tp=1"
                    )
                for key, value in (
                    ("moe expert width", model_cfg.expert_hidden_dim),
                    ("moe shared-experts width", model_cfg.shared_experts_hidden_dim),
                ):
                    if value % tp != 0:
                        raise ValueError(
                            f"model {key}={value} is not divisible by parallel.tp={tp}: tensor "
                            f"parallel splits it evenly across ranks; pick a tp that divides it"
                        )
            if model_cfg.qk_norm and model_cfg.qk_norm_scope == "full" and model_cfg.mla is None:
                raise ValueError(
                    "tensor parallel of full-width QK-norm (model.qk_norm_scope=full, OLMo 2) is not "
                    "supported: it normalises over every head's features; use parallel.tp=1"
                )
        self._check_speed_options(model_cfg)
        self._check_multi_token_prediction(model_cfg)
        stages = self.num_pipeline_stages
        if stages > model_cfg.n_layers:
            raise ValueError(
                f"parallel.pp={self.pp} x pp_stages_per_rank={cfg.pp_stages_per_rank} = {stages} pipeline stages but "
                f"model.n_layers={model_cfg.n_layers}: every stage needs at least one layer; lower parallel.pp"
            )
        if self.pp > 1 and cfg.pp_layer_split:
            parse_layer_split(cfg.pp_layer_split, model_cfg.n_layers, stages)
        if self.pp > 1:
            if model_cfg.tie_embeddings:
                raise ValueError(
                    "model.tie_embeddings=true puts one weight on the first and the last pipeline stage, which "
                    "pipeline parallel does not synchronise: set model.tie_embeddings=false or parallel.pp=1"
                )
            moe = model_cfg.moe
            if moe is not None and (moe.aux_loss_weight > 0 or moe.router_z_loss_weight > 0):
                raise ValueError(
                    "pipeline parallel computes the loss outside the model and would drop the MoE router losses: "
                    "set model.moe.aux_loss_weight=0 and model.moe.router_z_loss_weight=0, or parallel.pp=1"
                )
        if self.ep > 1:
            if model_cfg.moe is None:
                raise ValueError(f"parallel.ep={self.ep} needs an MoE model (model.moe is null): set parallel.ep=1")
            if model_cfg.moe.num_experts % self.ep != 0:
                raise ValueError(
                    f"model.moe.num_experts={model_cfg.moe.num_experts} is not divisible by parallel.ep={self.ep}: "
                    f"change one"
                )
        if self.cp > 1:
            if model_cfg.pos_embedding == "alibi":
                raise ValueError(
                    "context parallel does not support model.pos_embedding=alibi: use rope or learned, or parallel.cp=1"
                )
            if cfg.cp_method == "ulysses" and model_cfg.n_heads % self.cp != 0:
                raise ValueError(
                    f"Ulysses needs model.n_heads={model_cfg.n_heads} divisible by parallel.cp={self.cp}: change "
                    f"parallel.cp or use parallel.cp_method=ring"
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

    def _check_speed_options(self, model_cfg: "ModelConfig") -> None:
        """The model's speed options (model/config.py) against the layouts that cannot carry them."""
        if model_cfg.document_mask_eos_id is not None and (self.cp > 1 or self.pp > 1):
            raise ValueError(
                "model.document_mask_eos_id needs each layer to see whole sequences and their tokens, "
                "which context parallel (parallel.cp > 1) and later pipeline stages (parallel.pp > 1) "
                "do not: set it to null or use cp=1 and pp=1"
            )
        if model_cfg.attention_backend == "flex" and self.cp > 1:
            raise ValueError(
                "model.attention_backend=flex: context parallel computes attention itself (ring or "
                "Ulysses); use attention_backend=sdpa with parallel.cp > 1"
            )
        if model_cfg.vocab_multiple > 1 and self.tp > 1:
            raise ValueError(
                "model.vocab_multiple > 1 pads the output head's matmul outside its column-parallel "
                "plan: set model.vocab_multiple=1 with parallel.tp > 1 (the vocabulary already divides "
                "by tp there)"
            )
        if model_cfg.fused_projections and self.cfg.float8 != "none":
            raise ValueError(
                f"model.fused_projections=true multiplies by concatenated weights, which "
                f"parallel.float8={self.cfg.float8} (a swap of each Linear) would not convert: set one "
                f"of them off"
            )

    def _check_multi_token_prediction(self, model_cfg: "ModelConfig") -> None:
        """The MTP modules read tokens ahead of each position and sit after the output head: layouts that cut
        the sequence (cp) or the model (pp), or compute the loss outside it (tp), have no plan for them yet."""
        split = {key: value for key, value in (("tp", self.tp), ("cp", self.cp), ("pp", self.pp)) if value > 1}
        if model_cfg.mtp_depth and split:
            raise ValueError(
                f"model.mtp_depth={model_cfg.mtp_depth} (multi-token prediction) runs with data parallel layouts "
                f"(single, DDP, FSDP/HSDP, DeepSpeed ZeRO) and expert parallel only, not with "
                f"{', '.join(f'parallel.{k}={v}' for k, v in split.items())}: set model.mtp_depth=0 or those to 1"
            )

    # ------------------------------------------------------------------ degrees
    @property
    def dp_degree(self) -> int:
        """Number of distinct data slices: ranks that differ only in tp/cp/pp read the same data."""
        return self.dp_replicate * self.dp_shard

    @property
    def num_pipeline_stages(self) -> int:
        return self.pp * (self.cfg.pp_stages_per_rank if self.pp > 1 else 1)

    @property
    def ddp_enabled(self) -> bool:
        """torch DDP: only pure replication, since DDP does not take DTensor (TP/EP) parameters."""
        return self.dp_replicate > 1 and self.dp_shard * self.cp == 1 and self.tp == 1 and self.ep == 1

    @property
    def fsdp_enabled(self) -> bool:
        """FSDP2: sharding over dp_shard x cp, or replication of a TP/EP model through the HSDP mesh."""
        return self.dp_shard * self.cp > 1 or (self.dp_replicate > 1 and not self.ddp_enabled) or self.fsdp_one_rank

    @property
    def hsdp_enabled(self) -> bool:
        return self.dp_replicate > 1 and self.fsdp_enabled

    @property
    def shards_parameters(self) -> bool:
        """True when no rank holds the whole model as plain tensors (FSDP, TP, CP, EP or PP): it is built on the
        meta device and each rank materialises its own part."""
        return self.fsdp_enabled or self.tp > 1 or self.cp > 1 or self.ep > 1 or self.pp > 1

    @property
    def needs_mesh(self) -> bool:
        """True when the layout needs a process group and a DeviceMesh: several ranks, FSDP on one, or DeepSpeed
        on one (its engine runs only inside a process group)."""
        return self.world_size > 1 or self.fsdp_one_rank or self.cfg.engine == "deepspeed"

    # ------------------------------------------------------------------ mesh
    @property
    def mesh(self) -> Optional["DeviceMesh"]:
        """The world DeviceMesh from build_mesh (None for one process with nothing to lay out)."""
        return self._meshes.get("root")

    def dp_rank(self) -> int:
        """Index of the data-parallel slice this rank reads (0..dp_degree-1)."""
        if self.mesh is None or self.dp_degree == 1:
            return 0
        return self.submesh("dp").get_local_rank()

    def submesh(self, name: str) -> "DeviceMesh":
        """1-D mesh by name: a real dimension ("tp", "cp", ...) or a flattened one ("dp", "dp_shard_cp", "dp_cp",
        "ep", and "dp_shard" when ep > 1)."""
        if self.mesh is None:
            raise ValueError(f"no device mesh for {name!r}: call dims.build_mesh(device_type) first")
        return self._meshes[name] if name in self._meshes else self.mesh[name]

    def build_mesh(self, device_type: str) -> Optional["DeviceMesh"]:
        """Build (once) and keep the world DeviceMesh with every named dimension; None for a single process with
        nothing to lay out (one process with FSDP gets a 1-rank mesh: initialise a 1-rank process group first)."""
        if not self.needs_mesh or self.mesh is not None:
            return self.mesh
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
        flat: dict[str, Any] = {
            "dp": ("dp_replicate", *shard_dims),
            "dp_shard_cp": (*shard_dims, "cp"),
            "dp_cp": ("dp_replicate", *shard_dims, "cp"),
        }
        if self.ep > 1:
            flat.update(dp_shard=shard_dims, ep=("dp_shard_in_ep", "cp"))
        self._meshes["root"] = mesh
        for name, parts in flat.items():
            self._meshes[name] = mesh[parts]._flatten(mesh_dim_name=name)
        return mesh


def _resolve_data_parallel(cfg: ParallelConfig, world_size: int) -> tuple[int, int]:
    """(dp_replicate, dp_shard) with -1 resolved against the world size, checked to multiply to it."""
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
    return dp_replicate, dp_shard


def _check_options(cfg: ParallelConfig) -> None:
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if value not in allowed:
            raise ValueError(f"parallel.{key}={value!r} is not one of {list(allowed)}")
    if cfg.ac_every < 1:
        raise ValueError(f"parallel.ac_every={cfg.ac_every} must be >= 1 (checkpoint every k-th block)")
    ops = [op.strip() for op in cfg.ac_selective_ops.split(",") if op.strip()]
    bad = [op for op in ops if op not in AC_SELECTIVE_OPS]
    if bad or not ops:
        raise ValueError(
            f"parallel.ac_selective_ops={cfg.ac_selective_ops!r}: give a comma-separated subset of "
            f"{list(AC_SELECTIVE_OPS)}"
        )
    if cfg.pp_microbatches < 1 or cfg.pp_stages_per_rank < 1:
        raise ValueError("parallel.pp_microbatches and parallel.pp_stages_per_rank must be >= 1")
    stages = cfg.pp_stages_per_rank
    if cfg.pp > 1 and cfg.pp_schedule in PP_SINGLE_STAGE_SCHEDULES and stages != 1:
        raise ValueError(
            f"parallel.pp_schedule={cfg.pp_schedule} runs one stage per rank but parallel.pp_stages_per_rank="
            f"{stages}: set pp_stages_per_rank=1, or use Interleaved1F1B / InterleavedZeroBubble for several"
        )
    if cfg.pp > 1 and cfg.pp_schedule in PP_V_SCHEDULES and stages != 2:
        raise ValueError(
            f"parallel.pp_schedule={cfg.pp_schedule} places two stages per rank in a V but parallel."
            f"pp_stages_per_rank={stages}: set pp_stages_per_rank=2"
        )
