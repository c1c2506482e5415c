"""The GPU kit (make gpu-kit) and the one-call GPU figures (scripts/gpu_figures.sh), on the CPU: the kit's list is
derived from our requirements minus the GPU image, its folder is checked, the script installs a kit with
--no-index and runs every figure end to end on the tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from asuka.benchmark.figures import flux_extrapolation, run_figures
from asuka.benchmark.gpu_kit import check_kit, derive_kit
from asuka.utils.errors import AsukaError, ConfigError
from conftest import compose_config

REPO = Path(__file__).resolve().parents[1]


def test_derive_kit_follows_requirements_and_stops_at_the_image() -> None:
    requires = {
        "proj": ["a>=1", "img", "c; python_version < '3.12'", "pytest; extra == 'dev'", "d[x]"],
        "a": ["e", "img2"], "img": ["never-followed"], "d": ["f; extra == 'x'", "g; extra == 'y'"],
        "e": [], "f": [], "c": [],
    }
    versions = {"a": "1.0", "d": "2.0", "e": "3.0", "f": "4.0", "c": "5.0"}
    kit = derive_kit(["Img", "IMG2"], "3.12", project="proj", dist_version=versions.__getitem__,
                     dist_requires=requires.get)
    # c is for Python < 3.12 only, pytest for the dev extra, g for an extra nobody asks for; img/img2 are the image's
    assert kit == {"a": "1.0", "d": "2.0", "e": "3.0", "f": "4.0"}
    assert derive_kit([], "3.11", project="proj", dist_version=lambda n: versions.get(n, "9"),
                      dist_requires=requires.get)["c"] == "5.0"


def test_the_real_kit_is_our_requirements_minus_the_gpu_image() -> None:
    cfg = compose_config("gpu_kit")
    kit = derive_kit(cfg.image_packages, str(cfg.python_version))
    for needed in ("diffusers", "hydra-core", "omegaconf", "antlr4-python3-runtime", "lpips", "torch-fidelity",
                   "wandb", "pycocotools"):
        assert needed in kit, needed
    for on_image in ("torch", "torchvision", "transformers", "accelerate", "timm", "numpy", "safetensors",
                     "opencv-python-headless", "pytest", "pytest-xdist"):
        assert on_image not in kit, on_image


def _wheel(folder: Path, name: str, size: int = 10) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("payload.bin", os.urandom(size))
    return path


def test_check_kit_refuses_duplicates_strays_foreign_platforms_and_size(tmp_path: Path) -> None:
    kit = {"alpha": "1.0", "beta-pkg": "2.0"}
    _wheel(tmp_path, "alpha-1.0-py3-none-any.whl")
    with pytest.raises(AsukaError, match="no wheel for beta-pkg"):
        check_kit(tmp_path, kit, 48)
    beta = _wheel(tmp_path, "beta_pkg-2.0-cp312-cp312-manylinux_2_17_x86_64.whl", size=4096)
    rows = check_kit(tmp_path, kit, 48)
    assert [(r["name"], r["version"], r["bytes"]) for r in rows] == [
        ("alpha", "1.0", (tmp_path / "alpha-1.0-py3-none-any.whl").stat().st_size), ("beta-pkg", "2.0",
                                                                                    beta.stat().st_size)]
    with pytest.raises(AsukaError, match="over max_mib"):
        check_kit(tmp_path, kit, 1 / 2**20)
    dup = _wheel(tmp_path, "alpha-1.1-py3-none-any.whl")
    with pytest.raises(AsukaError, match="two wheels of alpha"):
        check_kit(tmp_path, {**kit, "alpha": "1.1"}, 48)
    dup.unlink()
    arm = _wheel(tmp_path, "gamma-1.0-cp312-cp312-manylinux_2_17_aarch64.whl")
    with pytest.raises(AsukaError, match="not a Linux x86-64 wheel"):
        check_kit(tmp_path, {**kit, "gamma": "1.0"}, 48)
    arm.unlink()
    _wheel(tmp_path, "delta-1.0-py3-none-any.whl")
    with pytest.raises(AsukaError, match="not in the kit"):
        check_kit(tmp_path, kit, 48)


def test_a_downloaded_kit_matches_the_derivation() -> None:
    """Where `make gpu-kit` has been run in this checkout: its folder is the derived list, under 64 MiB."""
    report = REPO / ".gpu-kit" / "kit.json"
    if not report.is_file():
        pytest.skip("no .gpu-kit/kit.json here (make gpu-kit downloads it; CI does not)")
    kit = json.loads(report.read_text())
    cfg = compose_config("gpu_kit")
    assert kit["packages"] == derive_kit(cfg.image_packages, str(cfg.python_version))
    rows = check_kit(REPO / ".gpu-kit", kit["packages"], float(cfg.max_mib))
    assert sum(r["bytes"] for r in rows) < 64 * 2**20


def _flux_report(steps: int, asuka_s: float, flux_s: float) -> dict:
    return {"task": "inference", "settings": {"steps": steps},
            "results": {"asuka_flux_s_median": asuka_s, "flux_fill_s_median": flux_s}}


def test_flux_extrapolation_is_the_line_through_two_step_counts() -> None:
    # asuka: 3 s fixed + 0.5 s/step; flux: 1 s fixed + 0.5 s/step
    reports = [_flux_report(2, 4.0, 2.0), _flux_report(6, 6.0, 4.0), _flux_report(4, 99.0, 99.0)]
    got = flux_extrapolation(reports)
    assert got["steps"] == [2, 6]
    assert got["asuka_flux_s_per_step"] == pytest.approx(0.5) and got["flux_fill_s_fixed"] == pytest.approx(1.0)
    assert got["ratio_at_50"] == pytest.approx((3 + 25) / (1 + 25))
    assert flux_extrapolation(reports[:1]) is None
    noisy = flux_extrapolation([_flux_report(2, 4.0, 2.0), _flux_report(6, 6.0, 1.5)])  # FLUX faster at 6 steps
    assert "ratio_at_50" not in noisy and "flux_fill" in noisy["invalid"]


def test_budget_spent_skips_figures_and_bad_keys_are_one_line(tmp_path: Path) -> None:
    cfg = compose_config("gpu_figures", ["device=cpu", "bench_model=tiny", "budget_s=0"])
    result = run_figures(cfg, tmp_path)
    assert {row["status"] for row in result["figures"]} == {"skipped"}
    assert len(result["figures"]) == len(cfg.figures)
    assert (tmp_path / "summary.md").read_text().count("| skipped |") == len(cfg.figures)
    with pytest.raises(ConfigError, match="model"):
        run_figures(compose_config("gpu_figures", ["device=cpu", "bench_model=huge"]), tmp_path)


def _run_sh(tmp_path: Path, kit: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_KIT": str(kit), "PYTHON": sys.executable,
           "GPU_KIT_TARGET": str(tmp_path / "target"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_figures.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def test_the_script_installs_a_kit_with_no_index(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    with zipfile.ZipFile(kit / "asuka_kit_probe-0.1-py3-none-any.whl", "w") as zf:
        zf.writestr("asuka_kit_probe/__init__.py", "VALUE = 42\n")
        zf.writestr("asuka_kit_probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: asuka-kit-probe\n"
                                                              "Version: 0.1\n")
        zf.writestr("asuka_kit_probe-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                                           "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("asuka_kit_probe-0.1.dist-info/RECORD", "")
    proc = _run_sh(tmp_path, kit, "device=cpu", "model=tiny", "budget_s=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gpu kit: installed 1 wheels" in proc.stdout
    assert (tmp_path / "target" / "asuka_kit_probe" / "__init__.py").read_text() == "VALUE = 42\n"


@pytest.mark.slow
def test_gpu_figures_end_to_end_on_the_tiny_models(tmp_path: Path) -> None:
    proc = _run_sh(tmp_path, tmp_path / "no-kit", "device=cpu", "model=tiny")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    names = [f.name for f in compose_config("gpu_figures").figures]
    assert [row["name"] for row in summary["figures"]] == names
    assert all(row["status"] == "ok" for row in summary["figures"]), summary["figures"]
    reports = {name: json.loads((out / f"{name}.json").read_text()) for name in names}
    for name, report in reports.items():
        assert {"command", "machine", "settings", "results", "peak_memory", "targets"} <= set(report), name
        assert report["settings"]["device"] == "cpu"
        assert report["peak_memory"]["peak_rss_mib"] > 0
    assert reports["inference_sd15_512"]["results"]["ratio_with_decoder"] > 0  # the decoder row ran too
    lo, hi = (reports[f"inference_flux_512_steps{s}"]["results"] for s in (2, 6))
    per_step = (hi["flux_fill_s_median"] - lo["flux_fill_s_median"]) / (3 - 1)  # tiny: 1 and 3 steps
    flux = summary["flux_extrapolation"]
    table = (out / "summary.md").read_text()
    if "invalid" in flux:  # tiny CPU timings can be noise: then the table says why it did not extrapolate
        assert "not extrapolated" in table
    else:
        assert flux["flux_fill_s_per_step"] == pytest.approx(per_step) and "extrapolated to 50 steps" in table
    assert all(f"| {name} | ok |" in table for name in names)
    assert summary["versions"]["torch"] and summary["versions"]["diffusers"]
