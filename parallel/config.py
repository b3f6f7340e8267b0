"""Parallel layout configuration (the `parallel` Hydra group): the schema, defaults and choices of every key.

Degrees multiply to the world size: dp_replicate * dp_shard * cp * tp * pp = world size (ep folds into the
data-parallel and context dimensions, as in torchtitan). `dp_shard=-1` takes whatever the others leave. The rules
that tie the keys to each other, the world size and the model are checked in one place, parallel/dims.py
(`ParallelDims.from_config`), before any process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from model.config import AC_MODES
from model.dtypes import canonical_precision

# The allowed values of each choice key, defined once (the implementations import them from here).
ENGINES = ("torch", "deepspeed")
AC_SELECTIVE_OPS = ("mm", "sdpa")
CP_METHODS = ("ring", "ulysses")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
COMPILE_SCOPES = ("block", "model")
FLOAT8_RECIPES = ("none", "tensorwise", "rowwise")
PP_SINGLE_STAGE_SCHEDULES = ("GPipe", "1F1B")  # one stage per rank
PP_V_SCHEDULES = ("ZBVZeroBubble",)  # two stages per rank, placed in a V
PP_ZERO_BUBBLE_SCHEDULES = ("InterleavedZeroBubble", *PP_V_SCHEDULES)  # backward split into input and weight passes
PP_SCHEDULES = (*PP_SINGLE_STAGE_SCHEDULES, "Interleaved1F1B", *PP_ZERO_BUBBLE_SCHEDULES)

CHOICES = {
    "engine": ENGINES,
    "ac_mode": AC_MODES,
    "cp_method": CP_METHODS,
    "pp_schedule": PP_SCHEDULES,
    "compile_backend": COMPILE_BACKENDS,
    "compile_scope": COMPILE_SCOPES,
    "float8": FLOAT8_RECIPES,
}


@dataclass
class ParallelConfig:
    name: str = "single"  # the layout's name (configs/parallel/<name>.yaml)
    dp_replicate: int = 1  # DDP replicas (or HSDP replicate groups when dp_shard > 1); -1: the rest of the world
    dp_shard: int = 1  # FSDP2 shard degree; -1: the rest of the world size
    cp: int = 1  # context parallel degree
    tp: int = 1  # tensor parallel degree
    pp: int = 1  # pipeline stages (ranks)
    ep: int = 1  # expert parallel degree (MoE)

    # Data-parallel engine: torch (DDP when only dp_replicate > 1, FSDP2 when dp_shard > 1) or DeepSpeed ZeRO.
    engine: str = "torch"  # see ENGINES
    zero_stage: int = 0  # 1 | 2 | 3 with engine=deepspeed
    zero_offload: bool = False  # DeepSpeed ZeRO-Offload of optimizer state (and params at stage 3) to CPU

    # FSDP2 options
    reshard_after_forward: bool = True  # false: ZeRO-2-like, keeps params gathered between forward and backward
    fsdp_param_dtype: str = "fp32"  # MixedPrecisionPolicy param dtype (model.dtypes.PRECISIONS)
    fsdp_reduce_dtype: str = "fp32"  # MixedPrecisionPolicy gradient-reduction dtype
    fsdp_cpu_offload: bool = False  # params, grads and optimizer state on the host (needs an accelerator)

    # Tensor parallel
    sequence_parallel: bool = True  # norms and residual stream sharded on the sequence between TP regions
    loss_parallel: bool = True  # cross-entropy on vocab-sharded logits (no all-gather of the logits)

    # Context parallel
    cp_method: str = "ring"  # see CP_METHODS
    cp_load_balance: bool = True  # zig-zag chunking so causal work is even across cp ranks

    # Pipeline parallel
    pp_schedule: str = "1F1B"  # see PP_SCHEDULES
    pp_microbatches: int = 4  # microbatches per rank's batch
    pp_stages_per_rank: int = 1  # >1 for interleaved / zero-bubble V schedules
    pp_layer_split: Optional[str] = None  # explicit "0-3,4-7" layer ranges; None: balanced by the cost estimate

    # Activation checkpointing and compile
    ac_mode: str = "none"  # see AC_MODES
    ac_every: int = 1  # with full: checkpoint every k-th block
    ac_selective_ops: str = "mm"  # with selective: save outputs of these ops (AC_SELECTIVE_OPS), recompute the rest
    compile: bool = False  # torch.compile, of what compile_scope names
    compile_scope: str = "block"  # COMPILE_SCOPES: each transformer block (one shared graph) | the whole model
    compile_backend: str = "inductor"  # see COMPILE_BACKENDS; aot_eager for debugging

    # Low precision
    float8: str = "none"  # FLOAT8_RECIPES: float8 matmuls in the blocks' Linear layers (torchao; Ada/Hopper GPUs)

    def __post_init__(self) -> None:
        # One spelling for dtypes everywhere: torch's long names are accepted and normalised.
        self.fsdp_param_dtype = canonical_precision(self.fsdp_param_dtype, "parallel.fsdp_param_dtype")
        self.fsdp_reduce_dtype = canonical_precision(self.fsdp_reduce_dtype, "parallel.fsdp_reduce_dtype")
