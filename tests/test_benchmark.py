"""The benchmark package: the script end to end on tiny models, the timing statistics, the MFU arithmetic."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from asuka.benchmark.run import evaluate_targets
from asuka.benchmark.tasks import BenchEnv, resolve_env
from asuka.benchmark.timing import count_flops, mfu, peak_bf16_flops, summarize, time_fn, time_runs
from asuka.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def run_script(tmp_path: Path, *args: str) -> dict:
    """Run scripts/benchmark.py with ``args``; return the JSON it wrote.

    ``threads=1``: on a 2-core machine shared with other jobs, two OpenMP threads spin against each other and a tiny
    run takes seconds instead of milliseconds.
    """
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), *args, "threads=1", f"out={out}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_inference_tiny_writes_ratio(tmp_path: Path) -> None:
    report = run_script(tmp_path, "task=inference", "model=tiny", "device=cpu", "size=64", "steps=2", "repeats=2")
    r = report["results"]
    for key in ("asuka_s_median", "sd_inpaint_s_median", "ratio"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["ratio"] == pytest.approx(r["asuka_s_median"] / r["sd_inpaint_s_median"])
    assert r["asuka_s_n"] == r["sd_inpaint_s_n"] == 2
    assert r["asuka_s_min"] <= r["asuka_s_median"] <= r["asuka_s_max"]
    assert r["outputs_finite"]
    assert report["model"] == "tiny" and report["settings"]["size"] == 64 and report["settings"]["steps"] == 2
    assert "model=tiny" in report["command"]
    for key in ("device_name", "torch", "diffusers"):
        assert report["machine"][key]
    assert report["date"].startswith("20")
    assert report["targets"] == []  # the targets are for model=sd15 only


def test_masks_task_writes_rate(tmp_path: Path) -> None:
    report = run_script(tmp_path, "task=masks", "size=128", "masks.n=10")
    r = report["results"]
    assert r["masks_per_s"] > 0 and r["masks_per_s_wall"] > 0
    assert sum(r["kinds"].values()) == 10
    assert r["anchor_masks_per_s"] > 0 and r["anchor_masks_per_s_seeded"] > 0 and r["masks_per_s_stream"] > 0
    # like for like: one stream each, or a fresh per-mask generator each
    assert r["ratio_to_anchor"] == pytest.approx(r["masks_per_s_stream"] / r["anchor_masks_per_s"])
    assert r["ratio_to_anchor_seeded"] == pytest.approx(r["masks_per_s"] / r["anchor_masks_per_s_seeded"])


def test_masks_task_without_the_anchor() -> None:
    """``masks.anchor=false`` (a key of configs/benchmark.yaml) times the mixture alone: no anchor figures, no ratios."""
    from conftest import compose_config

    from asuka.benchmark.masks import masks

    cfg = compose_config("benchmark", ["task=masks", "size=32", "masks.n=4", "masks.anchor=false", "device=cpu",
                                       "paths.coco_instances=null", "paths.object_masks=null"])
    r = masks(cfg, resolve_env(cfg))
    assert r["masks_per_s"] > 0 and r["masks_per_s_stream"] > 0 and sum(r["kinds"].values()) == 4
    assert r["anchor_masks_per_s"] is None and r["ratio_to_anchor"] is None and r["ratio_to_anchor_seeded"] is None


def test_lama_anchor_masks() -> None:
    from asuka.benchmark.lama_anchor import LamaStyleAnchor

    anchor = LamaStyleAnchor(64)
    rng = np.random.default_rng(0)
    masks = [anchor(rng) for _ in range(20)]
    assert all(m.shape == (1, 64, 64) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    assert 0.02 < np.mean([m.mean() for m in masks]) < 0.6  # holes drawn, not the whole image
    # the stroke half on its own draws holes too (a canvas that did not share memory once left it empty)
    for seed in range(5):
        canvas = np.zeros((64, 64), np.float32)
        anchor._irregular(np.random.default_rng(seed), canvas)
        assert canvas.mean() > 0.01, seed


def test_data_task_rows_and_estimate(tmp_path: Path) -> None:
    report = run_script(tmp_path, "task=data", "data.samples=2", "data.stages=[train_mae]", "data.jpeg_size=64",
                        "data.bank_masks=4", "size=32")
    r = report["results"]
    assert [row["option"] for row in r["rows"]] == ["online", "bank", "gpu_decode", "bank+gpu_decode"]
    for row in r["rows"]:
        assert row["stage"] == "train_mae" and row["resolution"] == 32 and row["cpu_ms_per_sample"] > 0
        # images/s of one GPU (mfu x peak / FLOPs per image) x CPU seconds per sample
        expected = r["mfu"] * r["peak_flops"] / row["flops_per_image"] * row["cpu_ms_per_sample"] / 1e3
        assert row["loader_processes_per_gpu"] == pytest.approx(expected)
    assert report["targets"][0]["target"].startswith("stage-1 loader processes")


def test_train_align_tiny_runs_the_real_stage(tmp_path: Path) -> None:
    """Smoke test of a train task (the stage modules change often): the real AlignStage, one timed step."""
    report = run_script(tmp_path, "task=train_align", "model=tiny", "device=cpu", "size=64", "batch=2", "repeats=1",
                        "train.stage_overrides=['trainer.grad_accum=2']")
    r = report["results"]
    assert r["images_per_s"] > 0 and r["flops_per_step"] > 0 and r["losses_finite"]
    assert r["batch_per_device"] == 2 and r["resolution"] == 64 and r["mixed_precision"] == "no"
    # a step is one optimizer update over grad_accum micro-batches: 2 x 2 images
    assert r["grad_accum"] == 2 and r["images_per_step"] == 4
    assert r["images_per_s"] == pytest.approx(4 / r["step_s_median"])
    assert r["flops_per_image"] == pytest.approx(r["flops_per_step"] / 4)
    assert r["mfu"] is None  # no GPU
    assert set(r["trainable_parameters_m"]) == {"alignment"}


def test_train_align_with_cached_latents_skips_exactly_the_two_encodes(tmp_path: Path) -> None:
    """``train.align_latents=true`` builds the cache first; the step's FLOPs drop by exactly two VAE encodes of the
    batch (image and masked image), counted here on the same tiny VAE."""
    from asuka.models.sd import build_tiny_sd

    args = ("task=train_align", "model=tiny", "device=cpu", "size=64", "batch=2", "repeats=1")
    plain = run_script(tmp_path / "plain", *args)["results"]
    cached = run_script(tmp_path / "cached", *args, "train.align_latents=true")["results"]
    assert any(o.startswith("paths.align_latents=") for o in cached["stage_overrides"]) and cached["losses_finite"]
    vae = build_tiny_sd(0).vae.eval()
    with torch.no_grad():
        encode = count_flops(lambda: vae.encode(torch.zeros(2, 3, 64, 64)))
    assert plain["flops_per_step"] - cached["flops_per_step"] == 2 * encode


# ------------------------------------------------------------------------------------------------ timing
def test_summarize_known_durations() -> None:
    durations = [3.0, 1.0, 2.0, 10.0]
    s = summarize(durations)
    assert s.median == 2.5 and s.min == 1.0 and s.max == 10.0 and s.n == 4
    # linear interpolation between order statistics: 1 + 0.75 * (2 - 1) and 3 + 0.25 * (10 - 3)
    assert s.q1 == pytest.approx(1.75) and s.q3 == pytest.approx(4.75) and s.iqr == pytest.approx(3.0)
    assert s.q1 == pytest.approx(np.percentile(durations, 25)) and s.q3 == pytest.approx(np.percentile(durations, 75))
    assert s.mean == pytest.approx(4.0)
    assert s.times == durations  # raw runs kept in their order
    one = summarize([0.5])
    assert one.median == one.min == one.max == 0.5 and one.iqr == 0.0
    with pytest.raises(ValueError):
        summarize([])


class FakeClock:
    """Returns 0, d1, d1 (next start), d1 + d2, ...: each timed run lasts the next of ``durations``."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.now, self.calls = list(durations), 100.0, 0

    def __call__(self) -> float:
        if self.calls % 2 == 1:  # an end reading: advance by the next duration
            self.now += self.durations.pop(0)
        self.calls += 1
        return self.now


def test_time_runs_with_fake_clock_interleaves_and_skips_warmup() -> None:
    calls: list[str] = []
    # rounds: (a, b), (a, b), (a, b) -> a: 1, 3, 2 ; b: 4, 4, 7
    clock = FakeClock([1.0, 4.0, 3.0, 4.0, 2.0, 7.0])
    stats = time_runs({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=2, repeats=3,
                      device="cpu", clock=clock)
    assert calls == ["a", "b"] * 5  # 2 untimed warm-up rounds, then 3 timed rounds, interleaved
    assert stats["a"].times == [1.0, 3.0, 2.0] and stats["a"].median == 2.0
    assert stats["b"].median == 4.0 and stats["b"].min == 4.0 and stats["b"].max == 7.0
    assert stats["b"].iqr == pytest.approx(np.percentile([4, 4, 7], 75) - np.percentile([4, 4, 7], 25))
    seen: list[tuple] = []
    time_runs({"a": lambda: None}, warmup=1, repeats=2, clock=FakeClock([0.5, 1.5]),
              progress=lambda done, rounds, times: seen.append((done, rounds, dict(times))))
    assert seen == [(1, 3, {}), (2, 3, {"a": 0.5}), (3, 3, {"a": 1.5})]  # one line per round, warm-up included
    single = time_fn(lambda: None, warmup=0, repeats=2, clock=FakeClock([0.25, 0.75]))
    assert single.median == pytest.approx(0.5)
    with pytest.raises(ValueError):
        time_fn(lambda: None, warmup=0, repeats=0)


# --------------------------------------------------------------------------------------------------- MFU
def test_mfu_arithmetic() -> None:
    # 6.0e14 FLOPs in 1.5 s on an H100 SXM (989e12 dense bf16): 4.0e14 / 9.89e14 = 0.40445...
    assert mfu(6.0e14, 1.5, 989e12) == pytest.approx(6.0e14 / 1.5 / 989e12)
    assert mfu(6.0e14, 1.5, 989e12) == pytest.approx(0.404449, rel=1e-5)
    assert mfu(3.12e14, 2.0, 312e12) == pytest.approx(0.5)  # A100: half the peak
    assert mfu(1e12, 1.0, None) is None and mfu(None, 1.0, 989e12) is None and mfu(1e12, 0.0, 989e12) is None
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Tesla T4") is None and peak_bf16_flops(None) is None


def test_count_flops_matches_hand_count() -> None:
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    # forward: a [4,8] x [8,16] matmul = 2 * 4 * 8 * 16 multiply-adds counted as FLOPs; the bias add is not counted
    assert count_flops(lambda: layer(x)) == 2 * 4 * 8 * 16
    # forward + backward: grad wrt input and grad wrt weight are one such matmul each
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 4 * 8 * 16


def test_count_flops_counts_attention_on_cpu() -> None:
    """SDPA on the CPU, counted as PyTorch counts its CUDA kernels: forward 2 products (q k^T, p v) of 2 b h s s d
    FLOPs each; backward 5 (the scores recomputed, then grad p, grad v, grad q, grad k)."""
    b, h, s, d = 2, 3, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    attention = torch.nn.functional.scaled_dot_product_attention
    product = 2 * b * h * s * s * d
    assert count_flops(lambda: attention(q, k, v)) == 2 * product
    assert count_flops(lambda: attention(q, k, v).sum().backward()) == (2 + 5) * product


def test_count_flops_allows_autograd_grad_inside() -> None:
    """The decoder stage calls torch.autograd.grad on a leaf weight inside its step (adaptive GAN weight)."""
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8)

    def step() -> None:
        loss = layer(x).square().mean()
        torch.autograd.grad(loss, layer.weight, retain_graph=True)
        loss.backward()

    assert count_flops(step) > 0


# ----------------------------------------------------------------------------------------------- settings
def test_resolve_env_and_targets() -> None:
    from conftest import compose_config

    cfg = compose_config("benchmark", ["bench_model=tiny", "task=inference", "device=cpu"])
    env = resolve_env(cfg)
    assert env.model == "tiny" and env.dtype == torch.float32 and env.size == 512 and env.steps == 50
    assert env.clock == "cpu"  # auto on a CPU: this process's CPU time
    # bare scripts/benchmark.py on a CPU machine: the CPU target's setting, not 50 steps at 512 of the real model
    bare = resolve_env(compose_config("benchmark", ["device=cpu"]))
    assert (bare.model, bare.size, bare.steps) == ("sd15", 256, 10)
    assert resolve_env(compose_config("benchmark", ["device=cpu", "size=512", "clock=wall"])).clock == "wall"
    with pytest.raises(ConfigError, match="clock"):
        resolve_env(compose_config("benchmark", ["clock=sundial"]))
    with pytest.raises(ConfigError):
        resolve_env(compose_config("benchmark", ["bench_model=sd21"]))
    with pytest.raises(ConfigError):
        resolve_env(compose_config("benchmark", ["task=nope"]))

    cpu = BenchEnv("inference", "sd15", torch.device("cpu"), torch.float32, 256, 10, None, 1, 2, 0)
    [target] = evaluate_targets(cpu, {"ratio": 1.10})
    assert target["threshold"] == pytest.approx(1.15) and target["met"] and target["margin"] == pytest.approx(0.05)
    [target] = evaluate_targets(cpu, {"ratio": 1.20})
    assert not target["met"]
    masks = BenchEnv("masks", "sd15", torch.device("cpu"), torch.float32, 512, 50, None, 1, 2, 0)
    assert evaluate_targets(masks, {"masks_per_s": 400.0})[0]["met"] is False
