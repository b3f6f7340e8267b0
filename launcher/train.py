"""`python -m launcher.train`: compose the Hydra config, reject a bad one within seconds, then train.

This file is the command-line entry (Hydra's `@hydra.main`); launcher/trainer.py is the training loop it calls.
The same command runs under torchrun or srun (see launcher/distributed.py), and as a Hydra multirun sweep (`-m
optim.lr=1e-3,3e-3`, each job in its own run directory: launcher/run_dir.py). Heavy imports (torch, the model,
data and parallel code) happen only after `validate` has passed, so a typo costs a second, not a model build.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from launcher.config import register_configs
from launcher.run_dir import RunDirError, check_same_run, register_resolvers, world_size_from_env
from launcher.validation import ConfigError, validate

log = logging.getLogger("launcher")

register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        plan = validate(cfg, world_size_from_env())
        config = OmegaConf.to_container(cfg, resolve=True)
        check_same_run(plan.cfg.trainer.run_dir, config, plan.cfg.trainer.resume_allow)
    except (ConfigError, RunDirError) as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    logging.getLogger().setLevel(plan.cfg.logging.level)
    from launcher.trainer import train

    train(plan, config)


if __name__ == "__main__":
    main()
