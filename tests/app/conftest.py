"""The app served by the test on 127.0.0.1 (tiny random demo models, 2 steps), shared by the module's tests."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    pytest.importorskip("gradio")
    from hydra import compose, initialize_config_dir

    import asuka.utils.cli  # noqa: F401  (resolvers)
    from asuka.app.page import launch

    out = tmp_path_factory.mktemp("app")
    overrides = ["experiment=demo", "steps=2", f"app.out_dir={out}", f"app.port={_free_port()}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        cfg = compose(config_name="app", overrides=overrides)
        page, models = launch(cfg, overrides, block=False)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{cfg.app.port}/", models=models, out=out)
    finally:
        page.close()
