"""Straight-vs-resumed equality for any stage: the interrupted run is pre-empted by a real SIGTERM mid-training."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file

from asuka.training.engine import fit


def interrupted(stage_cls: type, at_step: int) -> type:
    """``stage_cls`` whose process receives SIGTERM during optimizer step ``at_step`` (1-based)."""

    class Interrupted(stage_cls):
        def training_step(self, batch, step):
            if step + 1 == at_step:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().training_step(batch, step)

    return Interrupted


def final_weights(run_dir: Path, module: str) -> dict[str, torch.Tensor]:
    folder = run_dir / "final" / module
    files = list(folder.glob("*.safetensors"))
    assert len(files) == 1, folder
    return load_file(str(files[0]))


def assert_resume_exact(cfg, stage_cls: type, module: str, tmp_path: Path, stop_at: int) -> None:
    """Train straight, then interrupted at ``stop_at`` + resumed; the final weights agree to 1e-6."""
    straight = fit(cfg, stage_cls, tmp_path / "straight")
    assert straight["finished"]
    first = fit(cfg, interrupted(stage_cls, stop_at), tmp_path / "resumed")
    assert not first["finished"] and first["step"] == stop_at
    cfg.trainer.resume = "latest"
    second = fit(cfg, stage_cls, tmp_path / "resumed")
    assert second["finished"]
    a, b = final_weights(tmp_path / "straight", module), final_weights(tmp_path / "resumed", module)
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
