"""The estimate of a training config: the run `launcher.train` would start, sized without building anything.

The config is validated exactly as training validates it (launcher/validation.py, whose layout rules are
ParallelDims.from_config's) on the number of GPUs to size, so a layout training would refuse is refused here with
the same message; parallel/estimate.py then sizes memory and time from the validated plan.
"""

from __future__ import annotations

from typing import Any

from launcher.config import ESTIMATE_FORMATS, EstimateConfig
from launcher.validation import ConfigError, to_train_config, validate
from parallel.estimate import TrainingRun, estimate, layout_world_size


def estimate_training_config(cfg: Any) -> dict[str, Any]:
    """The report (parallel.estimate.estimate) of `cfg`, a composed configs/estimate.yaml or an EstimateConfig;
    ConfigError naming the key and the fix when training would refuse it or an estimate key is out of range."""
    config = to_train_config(cfg)
    if not isinstance(config, EstimateConfig):
        raise ConfigError(f"expected an EstimateConfig (configs/estimate.yaml), got {type(config).__name__}")
    if config.format not in ESTIMATE_FORMATS:
        raise ConfigError(f"format={config.format!r} is not one of {list(ESTIMATE_FORMATS)}")
    try:
        world_size = layout_world_size(config.parallel, config.num_gpus)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    plan = validate(config, world_size)
    t = config.trainer
    run = TrainingRun(
        model=config.model,
        dims=plan.dims,
        seq_len=config.data.seq_len,
        micro_batch_size=t.micro_batch_size,
        global_batch=plan.global_batch,
        precision=t.precision,
        optimizer=config.optim.name,
    )
    try:
        return estimate(run, gpu=config.gpu, tokens=config.tokens, mfu=config.mfu, peak_flops_per_gpu=config.peak_flops)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
