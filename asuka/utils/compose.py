"""Composing a script's config from code (the benchmark times a stage, the LAR-Gen samples mine with the engine's
config): one definition of where the checkout's ``configs/`` lives and how Hydra composes it, below every floor."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def configs_dir() -> Path:
    """The checkout's ``configs/`` folder (the package is installed editable from the checkout)."""
    return Path(__file__).resolve().parents[2] / "configs"


def compose_config(name: str, overrides: list[str]) -> DictConfig:
    """``configs/<name>.yaml`` composed with ``overrides``: inside a Hydra app through its compose API, else from
    the checkout's configs folder."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import asuka.utils.cli  # noqa: F401  (resolvers of configs/paths)

    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name=name, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(configs_dir())):
        return compose(config_name=name, overrides=overrides)
