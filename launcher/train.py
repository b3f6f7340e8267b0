"""`python -m launcher.train`: compose the Hydra config, reject a bad one within seconds, then train.

The same command runs under torchrun or srun (see launcher/distributed.py). Heavy imports (the model, data and
parallel code) happen only after `validate` has passed, so a typo costs a second, not a model build.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from launcher.config import ConfigError, default_run_dir, register_configs, validate, world_size_from_env

log = logging.getLogger("launcher")

register_configs()
if not OmegaConf.has_resolver("loom_run_dir"):
    OmegaConf.register_new_resolver("loom_run_dir", default_run_dir)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg, world_size_from_env())
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    logging.getLogger().setLevel(cfg.logging.level)
    from launcher.trainer import train

    train(cfg)


if __name__ == "__main__":
    main()
