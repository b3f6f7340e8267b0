"""DeepSpeed ZeRO 1/2/3 (and ZeRO-Offload) as an alternative data-parallel engine (parallel.engine=deepspeed).

DeepSpeed's engine owns the optimizer, the backward (gradient partitioning and reduction) and the step, so the
launcher's ZeRO train module (launcher/train_modules/zero.py) builds it with `deepspeed.initialize` instead of
creating its own optimizer. Everything DeepSpeed needs is generated from our configs (`deepspeed_config`), so
there is no separate JSON to keep in sync. The optimizer is torch's AdamW through DeepSpeed's `torch_adam`
switch: DeepSpeed's fused and CPU Adam kernels are JIT-compiled C++/CUDA extensions (about a minute on first use)
and give the same result. On CPU, DS_ACCELERATOR=cpu (DeepSpeed then communicates over gloo) and
TORCH_EXTENSIONS_DIR pointing at a cache dir (`prepare_deepspeed_env`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from model.dtypes import PRECISIONS
from parallel.dims import ParallelDims

_NEVER = 2**31 - 1  # DeepSpeed's steps_per_print: we log through launcher.metrics, not DeepSpeed's logger


def prepare_deepspeed_env(device_type: str) -> None:
    """Environment DeepSpeed needs before its first use.

    - On CPU, DS_ACCELERATOR=cpu (DeepSpeed then communicates over gloo).
    - TORCH_EXTENSIONS_DIR defaults to .cache/torch_extensions under the working directory, so ops DeepSpeed
      JIT-builds are cached per checkout, not in $HOME.
    - LOOM_DEEPSPEED_SHM_COMM=0 marks DeepSpeed's shared-memory CPU all-reduce kernel unavailable: it only speeds
      up CPU collectives and costs a ~30-170 s C++ build on first use (tests set it; DeepSpeed has no switch).
    """
    if device_type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.abspath(os.path.join(".cache", "torch_extensions")))
    if os.environ.get("LOOM_DEEPSPEED_SHM_COMM", "1") == "0":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(
    dims: ParallelDims,
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    precision: str,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    grad_clip: float,
) -> dict[str, Any]:
    """The DeepSpeed config dict for this run (precision: model.dtypes' fp32 | bf16 | fp16; the layout and the
    batch plan were checked by the launcher's validation)."""
    cfg = dims.cfg
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if cfg.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": micro_batch_size * grad_accum_steps * dims.dp_degree,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": float(grad_clip),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(betas),
                "eps": eps,
                "weight_decay": weight_decay,
                "torch_adam": True,
                "adam_w_mode": True,
            },
        },
        # DeepSpeed's mixed-precision sections are named like our precisions: {"bf16": {"enabled": ...}, ...}
        **{name: {"enabled": precision == name} for name in PRECISIONS if name != "fp32"},
        "zero_optimization": zero,
        # torch AdamW on offloaded (CPU) states instead of DeepSpeedCPUAdam, which would need a C++ build.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }


# AdamW's per-element state, as torch's AdamW names it (amsgrad, which adds max_exp_avg_sq, is not configured).
ADAM_MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


def _adamw(engine) -> torch.optim.Optimizer:
    """The torch AdamW DeepSpeed's ZeRO optimizer steps over its flat fp32 partitions."""
    return engine.optimizer.optimizer


def _flat_partitions(engine) -> list[tuple[int, torch.Tensor]]:
    """(AdamW param group index, flat fp32 partition) for every partition this rank steps: ZeRO 1/2 keep one per
    group in the optimizer's groups; ZeRO-3 keeps sub-groups and puts each into its group only while stepping it."""
    zero = engine.optimizer
    if hasattr(zero, "fp32_partitioned_groups_flat"):  # ZeRO-3
        return [(zero.sub_group_to_group_id[i], flat) for i, flat in enumerate(zero.fp32_partitioned_groups_flat)]
    if hasattr(zero, "fp32_groups_flat_partition"):  # DeepSpeed's BF16_Optimizer (bf16 ZeRO-1 in some configs)
        return list(enumerate(zero.fp32_groups_flat_partition))
    return list(enumerate(zero.single_partition_of_fp32_groups))


def materialize_optimizer_state(engine) -> None:
    """Create AdamW's state (zero moments, step 0) before the first step, so it can be read and overwritten by
    parameter name: torch creates it lazily in the first step. As torch's DCP does for its own optimizers, one step
    runs at lr 0 over zero gradients, which leaves every weight bit for bit unchanged (AdamW's decay multiplies by
    1 - lr * wd = 1). Then DeepSpeed's per-parameter views of ZeRO 1/2's flat state are (re)linked."""
    adamw = _adamw(engine)
    missing = [(group, flat) for group, flat in _flat_partitions(engine) if not adamw.state.get(flat)]
    if missing:
        saved = [(group["params"], group["lr"]) for group in adamw.param_groups]
        grads = [flat.grad for _, flat in missing]
        for group in adamw.param_groups:
            group["params"], group["lr"] = [], 0.0
        for index, flat in missing:
            adamw.param_groups[index]["params"].append(flat)
            flat.grad = torch.zeros_like(flat)
        adamw.step()
        for (_, flat), grad in zip(missing, grads):
            flat.grad = grad
            adamw.state[flat]["step"].zero_()
        for group, (params, lr) in zip(adamw.param_groups, saved):
            group["params"], group["lr"] = params, lr
    if hasattr(engine.optimizer, "_hp_optimizer_states_linked"):  # ZeRO 1/2 and BF16_Optimizer
        # Linked again every time: DeepSpeed links them once, after stepping its first param group only, so the
        # other groups' (the undecayed parameters') views would be missing.
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()


def optimizer_steps(engine) -> int:
    """AdamW's step count (its bias correction): one counter per flat partition, all stepped together."""
    counts = {float(state["step"]) for state in _adamw(engine).state.values() if "step" in state}
    if len(counts) > 1:
        raise RuntimeError(f"DeepSpeed's AdamW partitions disagree on their step count: {sorted(counts)}")
    return int(counts.pop()) if counts else 0


def set_optimizer_steps(engine, steps: int) -> None:
    for state in _adamw(engine).state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"].fill_(steps)
        else:
            state["step"] = torch.tensor(float(steps))


def _named_parameters(module) -> dict[str, torch.nn.Parameter]:
    """Every parameter once (a tied one under its first name), named as torch's get_optimizer_state_dict names
    them."""
    return dict(module.named_parameters())


def row_shards(full: torch.Tensor, mesh) -> torch.Tensor:
    """`full` (the same on every rank) as a DTensor sharded by rows over the 1-D `mesh`: this rank keeps its
    torch.chunk share (a copy, so the full tensor can be freed). Scalars stay whole."""
    from torch.distributed.tensor import DTensor, Shard

    if full.ndim == 0:
        return full
    chunks = full.chunk(mesh.size(), dim=0)
    rank = mesh.get_local_rank()
    local = chunks[rank] if rank < len(chunks) else full.new_empty((0, *full.shape[1:]))
    return DTensor.from_local(local.clone(), mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride())


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A full tensor from a checkpoint's entry (a DTensor is gathered: a collective)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def full_master_weights(engine, keep: Callable[[torch.Tensor], torch.Tensor] = _identity) -> dict[str, torch.Tensor]:
    """The model's state dict with DeepSpeed's fp32 master weights (gathered whole from the ZeRO 1/2/3 partitions
    with safe_get_full_fp32_param) for its parameters: the weights an fp32 torch layout holds, whatever precision
    the engine computes in. Each gathered tensor goes through `keep` at once (e.g. `row_shards`, so a rank holds
    one full parameter at a time). A collective: every rank gathers everything."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    first_name = {id(p): name for name, p in _named_parameters(module).items()}
    params = dict(module.named_parameters(remove_duplicate=False))
    masters = {name: keep(safe_get_full_fp32_param(p).detach()) for name, p in _named_parameters(module).items()}
    state: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if key in params:  # a parameter (a tied alias shares its master)
            state[key] = masters[first_name[id(params[key])]]
        else:  # a buffer: never partitioned, the same on every rank
            state[key] = value.detach().clone()
    return state


def load_master_weights(engine, state: dict[str, torch.Tensor]) -> None:
    """Set the fp32 master weights (each rank keeps its partition of the full tensors in `state`, a state dict by
    name as `full_master_weights` gives it: any layout's checkpoint), then the working copy the model computes
    with (16-bit or fp32; partitioned under ZeRO-3) and the buffers."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param

    module = engine.module
    with torch.no_grad():
        for name, param in _named_parameters(module).items():
            full = _whole(state[name]).to(torch.float32)
            safe_set_full_fp32_param(param, full)
            # No-op for ZeRO 1/2 (every rank holds the whole working copy); under ZeRO-3 the partitions are
            # gathered and rank 0's copy is partitioned again on exit.
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(full.to(param.dtype).reshape(param.shape))
        params = dict(module.named_parameters(remove_duplicate=False))
        for key, buffer in module.state_dict(keep_vars=True).items():
            if key not in params:
                buffer.data.copy_(_whole(state[key]))


def full_moments(
    engine, keep: Callable[[torch.Tensor], torch.Tensor] = _identity
) -> dict[str, dict[str, torch.Tensor]]:
    """Each parameter's AdamW moments by parameter name ({name: {"exp_avg": ..., "exp_avg_sq": ...}}), gathered
    whole from the ZeRO partitions with safe_get_full_optimizer_state (zeros before the first step), each through
    `keep` at once. A collective."""
    from deepspeed.utils import safe_get_full_optimizer_state

    materialize_optimizer_state(engine)
    return {
        name: {key: keep(safe_get_full_optimizer_state(param, key).detach()) for key in ADAM_MOMENT_KEYS}
        for name, param in _named_parameters(engine.module).items()
    }


def load_moments(engine, moments: dict[str, dict[str, torch.Tensor]], steps: int) -> None:
    """Set AdamW's moments (full tensors by parameter name; each rank keeps its partition) and step count."""
    from deepspeed.utils import safe_set_full_optimizer_state

    materialize_optimizer_state(engine)
    for name, param in _named_parameters(engine.module).items():
        for key in ADAM_MOMENT_KEYS:
            safe_set_full_optimizer_state(param, _whole(moments[name][key]).to(torch.float32), key)
    set_optimizer_steps(engine, steps)
