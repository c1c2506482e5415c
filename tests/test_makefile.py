"""The Makefile a newcomer runs: ``make clean`` keeps outputs/, ``make clean-outputs`` asks, the torch build is a
setting. Dry runs (``make -n``) only: nothing is installed or deleted."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def test_clean_keeps_outputs():
    out = make("-n", "clean")
    assert out.returncode == 0 and "rm -rf .venv" in out.stdout
    assert "outputs" not in out.stdout


def test_clean_outputs_needs_confirm():
    refused = make("clean-outputs")  # without CONFIRM=1 it stops before deleting anything
    assert refused.returncode != 0 and "CONFIRM=1" in refused.stdout
    confirmed = make("-n", "clean-outputs", "CONFIRM=1")
    assert confirmed.returncode == 0 and "rm -rf outputs" in confirmed.stdout


def test_torch_build_is_a_setting():
    default = make("-n", "-B", "install").stdout
    assert '"torch>=2.3,<2.14,!=2.13.0+cpu" "torchvision>=0.18,<0.29"' in default  # the default stays as it was
    custom = make("-n", "-B", "install", "TORCH_SPEC=torch==2.5.1", "TORCH_EXTRA_ARGS=--find-links /wheels").stdout
    assert "pip install -q --disable-pip-version-check --find-links /wheels torch==2.5.1" in custom
