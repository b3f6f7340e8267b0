"""Does Loom's torch-layout training step make the host wait for the device? Find out by running it.

A host sync (`.item()`, `bool(t)`, `float(t)`, `.tolist()`, `.cpu()`, ops whose output size depends on the data such as
`nonzero`) stalls the CPU until the GPU has finished everything queued, so the next step's kernels are not queued ahead
and the GPU idles between steps. Loom's step promises none (launcher/trainer.py's docstring); this module checks the
promise on the real step (the torch train module, `launcher.train_modules.torch_layouts`, with the optimizer, lr
schedule and layouts the launcher builds) in two ways:

- `SyncRecorder`, on any device: a dispatch mode that records every op that reads device data on the host
  (`aten._local_scalar_dense`, what item/bool/float/int call, and the data-dependent-shape ops) plus a function
  mode that records host copies (`Tensor.cpu`, `.tolist`, `.numpy`, and `.to("cpu")` of a device tensor). On
  CPU these calls cost nothing, which is why they must be caught by name there; only `.to("cpu")` cannot be
  told from a legitimate `.to(device)` when the device is the CPU.
- on CUDA also `torch.cuda.set_sync_debug_mode("warn")`, CUDA's own report of synchronising calls.

Used by benchmarks/gpu_check.py (on the GPU and, in --tiny mode, on CPU) and tests/benchmarks/test_host_sync.py.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_OPS = {
    "aten::_local_scalar_dense",  # item(), bool(), float(), int() of a tensor
    "aten::nonzero",
    "aten::masked_select",
    "aten::unique_consecutive",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::equal",
    "aten::is_nonzero",
    "aten::repeat_interleave.Tensor",
}
_HOST_COPIES = {"cpu", "tolist", "numpy"}  # item() shows as aten::_local_scalar_dense


def _where() -> str:
    """The innermost frames outside torch and this file: where the offending call was written."""
    frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename and f.filename != __file__]
    return " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(frames[-3:]))


class _DispatchRecorder(TorchDispatchMode):
    def __init__(self, found: list) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()  # "aten::nonzero", or with an overload "aten::repeat_interleave.Tensor"
        if name in _SYNC_OPS or name.split(".")[0] in _SYNC_OPS:
            self.found.append(f"{name} at {_where()}")
        return func(*args, **(kwargs or {}))


class _FunctionRecorder(TorchFunctionMode):
    def __init__(self, found: list) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _HOST_COPIES or (name == "to" and _device_to_host(args, kwargs)):
            self.found.append(f"Tensor.{name} at {_where()}")
        return func(*args, **kwargs)


def _device_to_host(args: tuple, kwargs: dict) -> bool:
    """`t.to(...)` from an accelerator to the CPU. (A CPU step cannot show this one: its device is the host.)"""
    source = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if source is None or source.device.type == "cpu":
        return False
    targets = [*args[1:], kwargs.get("device")]
    return any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets if t is not None)


class SyncRecorder:
    """`with SyncRecorder() as found:` runs the block and leaves in `found` one line per host sync seen."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.found: list[str] = []
        self.device = device
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> list[str]:
        if self.device is not None and self.device.type == "cuda":
            self._warnings = self._stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self._stack.enter_context(_FunctionRecorder(self.found))
        self._stack.enter_context(_DispatchRecorder(self.found))
        return self.found

    def __exit__(self, *exc: Any) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")  # first: the synchronize below is ours, not the step's
            torch.cuda.synchronize()  # errors of the recorded kernels surface here, inside the check
        self._stack.close()
        if self.device is not None and self.device.type == "cuda":
            self.found.extend(f"CUDA: {w.message}" for w in self._warnings if "synchroniz" in str(w.message))


def loom_torch_module(
    model_cfg: Any,
    device: torch.device,
    *,
    layout: str = "single",
    precision: str = "fp32",
    micro_batch_size: int = 2,
    grad_accum: int = 2,
    max_steps: int = 100,
    seq_len: int = 32,
    parallel: Optional[dict] = None,
):
    """Loom's torch train module as the launcher builds it for one process (launcher.train_modules.torch_layouts):
    the model (on `device`, or on a 1-rank FSDP mesh with layout="fsdp", which needs a process group) laid out by
    `parallelize` with `parallel` (more ParallelConfig fields: compile, compile_scope, float8, ...), AdamW (fused),
    the lr schedule, clipping, validated by the launcher's own validation."""
    from launcher.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig, TrainerConfig
    from launcher.distributed import DistEnv
    from launcher.train_modules.torch_layouts import TorchTrainModule
    from launcher.validation import validate
    from parallel.config import ParallelConfig

    config = TrainConfig(
        model=model_cfg,
        parallel=ParallelConfig(name=layout, dp_shard=-1 if layout == "fsdp" else 1, **(parallel or {})),
        data=DataConfig(name="synthetic", seq_len=seq_len),
        # The launcher asks for the fused AdamW on CUDA; CPU has a fused kernel too, so the CPU check runs that path.
        optim=OptimConfig(fused=True),
        schedule=ScheduleConfig(warmup_steps=2),
        trainer=TrainerConfig(
            run_dir="unused",
            max_steps=max_steps,
            global_batch_size=micro_batch_size * grad_accum,
            micro_batch_size=micro_batch_size,
            precision=precision,
            device=device.type,
            seed=0,
        ),
    )
    plan = validate(config, 1)
    plan.dims.build_mesh(device.type)
    return TorchTrainModule(plan, DistEnv(0, 0, 1, device))


def host_syncs_in_step(
    model_cfg: Any,
    device: torch.device,
    *,
    layout: str = "single",
    precision: str = "fp32",
    seq_len: int = 32,
    warmup_steps: int = 2,
) -> list[str]:
    """Host syncs seen in one step of the train module (after `warmup_steps` unrecorded ones: lazy state is created
    then), the batch moved to the device the launcher's way (`launcher.trainer.to_device`)."""
    from launcher.trainer import to_device

    module = loom_torch_module(model_cfg, device, layout=layout, precision=precision, seq_len=seq_len)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model_cfg.vocab_size, (4, seq_len + 1), generator=gen) for _ in range(warmup_steps + 1)]
    for batch in batches[:-1]:
        batch = to_device(batch, device)
        module.train_step(batch[:, :-1], batch[:, 1:])
    with SyncRecorder(device) as found:
        batch = to_device(batches[-1], device)
        out = module.train_step(batch[:, :-1], batch[:, 1:])
    loss, grad_norm = out.loss, out.grad_norm
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):  # read after recording: a real step ran
        raise RuntimeError(f"the recorded step gave loss {loss} and grad norm {grad_norm}")
    return found
