"""The comparison report (scripts/compare.py) on two real demo eval runs (tiny models, random metric weights)."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import REPO, compose_config

METHODS = ("asuka", "sd")


def _eval(method: str, run_dir: Path) -> Path:
    """One demo eval run in-process, with the run config where Hydra would save it."""
    from asuka.eval.run import evaluate

    cfg = compose_config("eval", ["experiment=demo", f"method={method}", "metrics.cache_dir=null"])
    evaluate(cfg, run_dir)
    saved = OmegaConf.to_container(cfg, resolve=False)
    saved.pop("hydra")
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(saved), run_dir / ".hydra" / "config.yaml")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("evals")
    return [_eval(m, root / m) for m in METHODS]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    from asuka.report.compare import compare

    out = tmp_path_factory.mktemp("report")
    compare(compose_config("compare", [f"runs=[{runs[0]},{runs[1]}]", f"out={out}"]))
    return out


def _rows(run: Path) -> list[dict]:
    with open(run / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_table_values_are_the_runs_json_values_with_the_best_in_bold(runs, report) -> None:
    md = (report / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    cols = [c.split()[0] for c in header.strip("|").split("|")[1:]]
    assert {"fid", "lpips", "psnr", "ssim"} <= set(cols)
    results = [json.loads((r / "results.json").read_text())["metrics"] for r in runs]
    for method, res in zip(METHODS, results):
        line = next(line for line in md.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in line.strip("|").split("|")[1:]]
        for col, cell in zip(cols, cells):
            assert cell.strip("*") == f"{res[col]:.4f}", (method, col)
            other = [r[col] for r in results]
            best = max(other) if col in ("u_ids", "p_ids", "psnr", "ssim") else min(other)
            assert cell.startswith("**") == (res[col] == best), (method, col)
    html = (report / "report.html").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert html.count("<b>") == sum(line.count("**") for line in table) // 2 > 0


def test_plots_and_grids_are_pngs_of_the_expected_size(report) -> None:
    for metric in ("lpips", "psnr", "ssim"):
        with Image.open(report / f"area_{metric}.png") as img:
            assert (img.format, img.size) == ("PNG", (600, 400))
    assert not list(report.glob("domain_*.png"))  # the samples have no domains
    for grid in ("grid_items.png", "grid_disagreement.png"):
        with Image.open(report / grid) as img:
            img.load()
            assert (img.format, img.size) == ("PNG", (128 * (len(METHODS) + 2), 128 * 4))
    with Image.open(report / "grid_items.png") as img:  # row 0 is scene_00; its last tile the ground truth
        tile = img.convert("RGB").crop((128 * (len(METHODS) + 1), 0, 128 * (len(METHODS) + 2), 128))
    with Image.open(REPO / "data" / "samples" / "scene_00.png") as gt:
        assert list(tile.getdata()) == list(gt.convert("RGB").resize((128, 128), Image.BICUBIC).getdata())
    html = (report / "report.html").read_text()
    for src in re.findall(r'<img src="([^"]+)"', html):
        assert (report / src).is_file() and "/" not in src


def test_disagreement_grid_starts_with_the_largest_lpips_spread(runs, report) -> None:
    per_run = [{r["name"]: float(r["lpips"]) for r in _rows(run)} for run in runs]
    spread = {n: abs(per_run[0][n] - per_run[1][n]) for n in per_run[0]}
    expected = sorted(spread, key=spread.get, reverse=True)[:4]
    md = (report / "report.md").read_text()
    section = md.split("## Largest disagreement")[1]
    rows = re.search(r"Rows: ([^.]+)\.", section).group(1).split(", ")
    assert rows == expected


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.mark.parametrize("change", ["dataset", "items", "masks"])
def test_incomparable_runs_are_refused_in_one_line(runs, tmp_path, change) -> None:
    other = _copy(runs[1], tmp_path / "other")
    expected = {"dataset": "dataset places2 vs samples", "items": "other items (7 vs 8",
                "masks": "other masks for 1 item(s), e.g. scene_03"}
    if change == "dataset":
        res = json.loads((other / "results.json").read_text())
        res["meta"]["dataset"] = "places2"
        (other / "results.json").write_text(json.dumps(res))
    elif change == "items":
        lines = (other / "per_image.csv").read_text().splitlines()
        (other / "per_image.csv").write_text("\n".join(lines[:-1]) + "\n")
    else:
        data = shutil.copytree(REPO / "data" / "samples", tmp_path / "samples")
        mask = data / "masks" / "scene_03.png"
        Image.open(mask).convert("L").point(lambda v: 255 - v).save(mask)
        cfg = OmegaConf.load(other / ".hydra" / "config.yaml")
        cfg.dataset.root, cfg.dataset.mask_root = str(data), str(data / "masks")
        OmegaConf.save(cfg, other / ".hydra" / "config.yaml")
    proc = subprocess.run([sys.executable, "scripts/compare.py", f"runs=[{runs[0]},{other}]",
                           f"out={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not comparable" in lines[0] and expected[change] in lines[0], lines
    assert not (tmp_path / "out" / "report.html").exists()


def test_report_images_all_load_in_a_headless_browser(report, tmp_path) -> None:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("no chromium + chromedriver on this machine (apt-get install chromium chromium-driver): the "
                    "browser check of report.html did not run")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((report / "report.html").as_uri())
        loaded = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);")
    finally:
        driver.quit()
    assert len(loaded) == len(list(report.glob("*.png"))) and all(ok for _, ok in loaded), loaded


def test_per_domain_bars_when_the_runs_have_domains(runs, tmp_path) -> None:
    from asuka.report.compare import compare

    copies = []
    for k, run in enumerate(runs):  # MISATO-like results: by_domain as eval writes it for a dataset with domains
        copy = _copy(run, tmp_path / run.name)
        res = json.loads((copy / "results.json").read_text())
        res["by_domain"] = {d: dict(res["metrics"], lpips=0.1 * (k + 1) + 0.01 * j)
                            for j, d in enumerate(("indoor", "outdoor"))}
        (copy / "results.json").write_text(json.dumps(res))
        copies.append(copy)
    out = tmp_path / "report"
    compare(compose_config("compare", [f"runs=[{copies[0]},{copies[1]}]", f"out={out}"]))
    with Image.open(out / "domain_lpips.png") as img:
        assert (img.format, img.size) == ("PNG", (600, 400))
    assert 'src="domain_lpips.png"' in (out / "report.html").read_text()
