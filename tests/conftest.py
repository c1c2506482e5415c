"""Shared test fixtures: configs composed from the real tree, with tiny models, offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# One compute thread per test process (and, through the environment, per script a test starts): on a 2-core machine
# two intra-op threads spin against each other and the subprocess tests; tiny models gain nothing from more. Set
# OMP_NUM_THREADS before running pytest to try another count: no test depends on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402  (after OMP_NUM_THREADS)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app served on 127.0.0.1 (tiny random demo models, 2 steps), shared by a module's tests (tests/app)."""
    from types import SimpleNamespace

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio")
    from asuka.app.page import launch

    out = tmp_path_factory.mktemp("app")
    overrides = ["experiment=demo", "steps=2", f"app.out_dir={out}", f"app.port={_free_port()}"]
    import asuka.utils.cli  # noqa: F401  (resolvers)

    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        cfg = compose(config_name="app", overrides=overrides)
        page, models = launch(cfg, overrides, block=False)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{cfg.app.port}/", models=models, out=out)
    finally:
        page.close()
