"""The FLUX.1-Fill-dev baseline as a user reaches it: released condition files -> ``scripts/convert_asuka.py`` ->
``scripts/eval.py method=flux_fill paths.asuka_flux=...`` (tiny random FLUX parts, the shipped samples); the
stored prompt of the converted folder is what the baseline samples with."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, compose_config  # noqa: E402

from asuka.pipelines.build_flux import build_flux_pipeline, with_flux_model  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
METRICS = ("fid", "u_ids", "p_ids", "psnr", "ssim", "lpips", "grad", "clip")


def run(script: str, *overrides: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *overrides], env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_convert_then_evaluate_the_flux_fill_baseline(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    torch.manual_seed(0)
    released = {"vec": torch.randn(1, 24), "txt_256": torch.randn(1, 16, 32), "txt": torch.randn(1, 20, 32)}
    for stem, tensor in released.items():  # model=flux_tiny widths: txt 32, vec 24
        torch.save(tensor, src / f"{stem}.pt")
    out = tmp_path / "asuka-flux"
    run("convert_asuka.py", f"src={src}", f"out={out}", "model=flux_tiny", f"hydra.run.dir={tmp_path / 'convert'}")
    report = json.loads((out / "conversion_report.json").read_text())
    for stem, tensor in released.items():
        assert report["sources"][f"{stem}.pt"]["sha256"] == hashlib.sha256((src / f"{stem}.pt").read_bytes()).hexdigest()
        assert torch.equal(load_file(str(out / "conditions" / f"{stem}.safetensors"))[stem], tensor)

    run("eval.py", "experiment=demo", "method=flux_fill", f"paths.asuka_flux={out}", "num_inference_steps=1",
        f"hydra.run.dir={tmp_path / 'eval'}")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["meta"]["method"] == "flux_fill" and results["metrics"]["count"] == 8
    assert all(math.isfinite(results["metrics"][m]) for m in METRICS), results["metrics"]
    assert len(list((tmp_path / "eval" / "predictions").glob("*.png"))) == 8

    # the same folder with another stored prompt, built as eval.py builds the baseline: other samples, so the
    # baseline samples with the converted txt
    other = tmp_path / "other"
    shutil.copytree(out, other)
    save_file({"txt": torch.randn(1, 20, 32)}, str(other / "conditions" / "txt.safetensors"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    samples = []
    for folder in (out, out, other):
        cfg = compose_config("eval", ["experiment=demo", "method=flux_fill", f"paths.asuka_flux={folder}"])
        pipe = build_flux_pipeline(with_flux_model(cfg), baseline=True)
        samples.append(pipe(image=image, mask_image=Image.fromarray(mask), num_inference_steps=1, output_type="np",
                            generator=torch.Generator().manual_seed(0)).images)
    assert np.array_equal(samples[0], samples[1]) and np.abs(samples[0] - samples[2]).max() > 0
