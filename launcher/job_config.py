"""The training job a command line describes: the config `launcher.train` would compose, its `cluster` section,
and the launcher's validation on the job's world size (nodes x ranks per node). Shared by `launcher.submit` (which
renders and submits the job) and `launcher.dry_run` (which builds it at full world size on this machine)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cluster.config import ClusterConfig
from cluster.slurm import REPO
from launcher.config import register_configs
from launcher.hf_init import adopt_hf_model
from launcher.run_dir import register_resolvers
from launcher.validation import ConfigError, RunPlan, validate

HELP_FLAGS = ("-h", "--help")


def compose(overrides: list[str]) -> DictConfig:
    """The training config exactly as `python -m launcher.train <overrides>` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def validate_on_allocation(cfg: DictConfig, cluster: ClusterConfig) -> RunPlan:
    """The launcher's validation on the job's world size (nodes x ranks per node), the allocation named on error."""
    ranks = cluster.training_ranks_per_node()
    world_size = cluster.nodes * ranks
    try:
        return validate(adopt_hf_model(cfg), world_size)  # trainer.init_from=<HF directory>: its model
    except ConfigError as exc:
        raise ConfigError(
            f"{exc} [the job would run {cluster.nodes} node(s) x {ranks} rank(s) per node = {world_size} "
            f"processes: change the layout or cluster.nodes / cluster.gpus_per_node / cluster.ranks_per_node]"
        ) from exc


def cluster_config(cfg: DictConfig) -> ClusterConfig:
    """The composed `cluster` section as a ClusterConfig (its checks run); ConfigError naming the key."""
    try:
        return OmegaConf.to_object(cfg.cluster)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - OmegaConf wraps __post_init__ errors in its own types
        raise ConfigError(f"cluster: {exc}") from exc
