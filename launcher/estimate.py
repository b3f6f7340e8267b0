"""`python -m launcher.estimate`: the command line of the layout estimate (launcher/run_estimate.py does the work).

Takes every `launcher.train` override as is (configs/estimate.yaml composes configs/train.yaml) plus the
estimate's own keys, and prints a table or JSON; a config training would refuse exits 2 with training's message.
"""

from __future__ import annotations

import json
import sys

import hydra
from omegaconf import DictConfig

from launcher.config import EstimateConfig, register_configs
from launcher.run_dir import register_resolvers
from launcher.run_estimate import estimate_training_config
from launcher.validation import ConfigError
from parallel.estimate import format_table

register_configs(EstimateConfig)  # train.yaml composes onto the training schema plus the estimate's keys
register_resolvers()


@hydra.main(version_base="1.3", config_path="../configs", config_name="estimate")
def main(cfg: DictConfig) -> None:
    try:
        report = estimate_training_config(cfg)
    except ConfigError as exc:  # a config training would refuse: say which key, without a traceback
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2) if cfg.format == "json" else format_table(report))


if __name__ == "__main__":
    main()
