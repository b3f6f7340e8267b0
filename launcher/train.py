"""`python -m launcher.train`: compose the Hydra config, reject a bad one within seconds, then train.

This file is the command-line entry (Hydra's main function); launcher/trainer.py is the training loop it calls.
The same command runs under torchrun or srun (see launcher/distributed.py), and as a Hydra multirun sweep (`-m
optim.lr=1e-3,3e-3`, each job in its own run directory: launcher/run_dir.py). Before any process group exists it
validates the config (launcher/validation.py), refuses a run directory that holds another run, and takes the run
directory's lock (one writer per run dir). Heavy imports (torch, the model, data and parallel code) happen only
after that, so a typo costs a second, not a model build. Failures an operator must act on (no checkpoint can be
resumed, no disk space, a diverged run, a resume that would not continue the run) end with one clear message and
a non-zero exit, not a traceback.
"""

from __future__ import annotations

if __name__ == "__main__":  # a command: catch SIGTERM/USR1 from the start, while torch and the rest still import
    from launcher.stop_request import StopRequest as _StopRequest

    _EARLY_STOP = _StopRequest().install()

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from launcher.config import register_configs
from launcher.hf_init import adopt_hf_model
from launcher.resume_check import ResumeFormatError, check_resumable
from launcher.run_dir import RunDirError, RunLock, check_same_run, register_resolvers, world_size_from_env
from launcher.stop_request import StopRequest
from launcher.validation import ConfigError, validate

log = logging.getLogger("launcher")

register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    # A SIGTERM or USR1 from here on means "save and exit", never a crash (as a command: from the very start).
    stop = globals().get("_EARLY_STOP") or StopRequest().install()
    lock = None
    try:
        cfg = adopt_hf_model(cfg)  # trainer.init_from=<HF directory>: the model is that directory's
        plan = validate(cfg, world_size_from_env())
        config = OmegaConf.to_container(cfg, resolve=True)
        check_same_run(plan.cfg.trainer.run_dir, config, plan.cfg.trainer.resume_allow)
        check_resumable(plan.cfg.trainer.run_dir, plan.cfg.trainer.resume, plan.cfg.parallel.name)
        if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
            lock = RunLock(plan.cfg.trainer.run_dir)  # one writer per run dir, before any process group
            for note in plan.notes:  # what this layout leaves out, said before anything starts
                print(f"note: {note}", file=sys.stderr, flush=True)
    except (ConfigError, RunDirError, ResumeFormatError) as exc:
        print(f"config error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    logging.getLogger().setLevel(plan.cfg.logging.level)
    from launcher.checkpoint import CheckpointError, NoSpaceError, ResumeRefused
    from launcher.nonfinite import NonFiniteError
    from launcher.trainer import train

    try:
        train(plan, config, stop)
    except (CheckpointError, NoSpaceError, ResumeRefused, NonFiniteError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    main()
