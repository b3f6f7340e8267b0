"""Parallel layout configuration (the `parallel` Hydra group).

Degrees multiply to the world size: dp_replicate * dp_shard * cp * tp * pp = world size (ep folds into the
data-parallel and context dimensions, as in torchtitan). `dp_shard=-1` takes whatever the others leave.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class ParallelConfig:
    name: str = "single"
    dp_replicate: int = 1  # DDP replicas (or HSDP replicate groups when dp_shard > 1)
    dp_shard: int = 1  # FSDP2 shard degree; -1 = the rest of the world size
    cp: int = 1  # context parallel degree
    tp: int = 1  # tensor parallel degree
    pp: int = 1  # pipeline stages (ranks)
    ep: int = 1  # expert parallel degree (MoE)

    # Data-parallel engine: torch (DDP when only dp_replicate > 1, FSDP2 when dp_shard > 1) or DeepSpeed ZeRO.
    engine: str = "torch"  # torch | deepspeed
    zero_stage: int = 0  # 1 | 2 | 3 with engine=deepspeed
    zero_offload: bool = False  # DeepSpeed ZeRO-Offload of optimizer state (and params at stage 3) to CPU

    # FSDP2 options
    reshard_after_forward: bool = True  # false: ZeRO-2-like, keeps params gathered between forward and backward
    fsdp_param_dtype: str = "float32"  # bfloat16: MixedPrecisionPolicy param dtype
    fsdp_reduce_dtype: str = "float32"
    fsdp_cpu_offload: bool = False

    # Tensor parallel
    sequence_parallel: bool = True
    loss_parallel: bool = True

    # Context parallel
    cp_method: str = "ring"  # ring | ulysses
    cp_load_balance: bool = True  # zig-zag chunking so causal work is even across cp ranks

    # Pipeline parallel
    pp_schedule: str = "1F1B"  # GPipe | 1F1B | Interleaved1F1B | ZBVZeroBubble (or InterleavedZeroBubble)
    pp_microbatches: int = 4
    pp_stages_per_rank: int = 1  # >1 for interleaved / zero-bubble V schedules
    pp_layer_split: Optional[str] = None  # explicit "0-3,4-7" layer ranges; None: balanced by the cost estimate

    # Activation checkpointing and compile
    ac_mode: str = "none"  # none | full | selective
    ac_every: int = 1  # with full: checkpoint every k-th block
    ac_selective_ops: str = "mm"  # with selective: save outputs of these ops (mm, sdpa) and recompute the rest
    compile: bool = False  # torch.compile, of what compile_scope names
    compile_scope: str = "block"  # block: each transformer block (one shared graph) | model: the whole model
    compile_backend: str = "inductor"  # torch.compile backend: inductor (fused kernels) | aot_eager | eager (debugging)

    # Low precision
    float8: str = "none"  # none | tensorwise | rowwise: float8 matmuls in the blocks' Linear layers (torchao)

    def __post_init__(self) -> None:
        # Checks of the options whose code lives in parallel/compile.py and parallel/float8.py, run when Hydra
        # turns the config into this dataclass (before any process group exists).
        from parallel.compile import check_compile_options
        from parallel.float8 import check_float8_options

        check_compile_options(self)
        check_float8_options(self)
