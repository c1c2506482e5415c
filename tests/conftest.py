"""Shared test fixtures: configs composed from the real tree, with tiny models, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def compose_config(name: str, overrides: list[str] | None = None):
    """Compose ``configs/<name>.yaml`` as Hydra would, with ``${hydra:...}`` resolvable."""
    import asuka.utils.cli  # noqa: F401  (registers the run_stamp resolver)

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return compose(config_name=name, overrides=overrides or [], return_hydra_config=True)


@pytest.fixture
def repo() -> Path:
    return REPO
