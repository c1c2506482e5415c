"""Every module of the package imports under the installed versions (CI installs the newest torch < 2.14 and the
newest transformers 5.x the registry has; the GPU image has torch 2.11 and transformers 5.17): an API that moved
between versions fails here, by module name, instead of on a lent GPU."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import asuka

MODULES = sorted(m.name for m in pkgutil.walk_packages(asuka.__path__, "asuka."))


def test_the_walk_finds_every_floor() -> None:
    for floor in ("utils", "data", "models", "training", "pipelines", "eval", "benchmark"):
        assert any(name.startswith(f"asuka.{floor}.") for name in MODULES), floor


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)
