"""The shared engine on its own: exact resume, checkpoint rotation and atomicity, guards, config errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asuka.training.engine import fit
from asuka.training.optim import lr_multiplier
from asuka.training.run_dir import RunLayout
from asuka.training.run_dir import checkpoint as ckpt
from asuka.utils.errors import AsukaError, ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from resume_check import assert_resume_exact  # noqa: E402
from toy_stage import ToyStage, toy_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(tmp_path):
    """Pre-empted by SIGTERM after step 4 of 6 and resumed: the same weights (EMA, two optimizers, RNG in the step,
    cosine schedule) as straight through, and the steps are logged once each."""
    assert_resume_exact(toy_config(), ToyStage, "net", tmp_path, stop_at=4)
    assert_resume_exact(toy_config(), ToyStage, "head", tmp_path / "again", stop_at=4)
    assert steps_logged(tmp_path / "resumed") == [1, 2, 3, 4, 5, 6]


def test_extending_a_finished_run_logs_only_new_steps(tmp_path):
    fit(toy_config(max_steps=4), ToyStage, tmp_path)
    fit(toy_config(max_steps=6, resume="latest"), ToyStage, tmp_path)
    assert steps_logged(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_run_folder_and_rotation(tmp_path):
    fit(toy_config(max_steps=6, keep_checkpoints=2), ToyStage, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["world_size"] == 1 and info["effective_batch"] == 4 and "torch" in info["versions"]
    assert (tmp_path / "config.yaml").is_file()
    state = json.loads((tmp_path / "checkpoints/checkpoint-6/trainer_state.json").read_text())
    assert state["step"] == 6
    for name in ("net", "head", "ema_net", "ema_head"):
        assert (tmp_path / "checkpoints/checkpoint-6" / name / "model.safetensors").is_file()
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "loss_net", "loss_head", "bad_images"} <= set(record)


def test_rotation_keeps_newest_complete(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (2, 4):
        (ckpt_dir / f"checkpoint-{step}").mkdir(parents=True)
        (ckpt_dir / f"checkpoint-{step}" / ckpt.STATE_FILE).write_text("{}")
    (ckpt_dir / "checkpoint-6").mkdir()  # incomplete: no state file
    ckpt.rotate(ckpt_dir, keep=1)
    assert (ckpt_dir / "checkpoint-4").is_dir() and not (ckpt_dir / "checkpoint-2").exists()


def test_resume_latest_skips_incomplete(tmp_path, caplog):
    fit(toy_config(max_steps=4), ToyStage, tmp_path)
    (tmp_path / "checkpoints/checkpoint-4/trainer_state.json").unlink()  # as if killed mid-write
    assert ckpt.resolve_resume("latest", RunLayout(tmp_path)).name == "checkpoint-2"
    assert "incomplete" in caplog.text


def test_lr_schedule():
    assert lr_multiplier(0, 10, 100, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_multiplier(9, 10, 100, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_multiplier(55, 10, 100, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(100, 10, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(50, 10, 100, "constant", 0.0) == 1.0


def test_nonfinite_loss_is_skipped_then_stops(tmp_path):
    cfg = toy_config(max_steps=6)
    cfg.toy = {"nan_steps": [3]}
    fit(cfg, ToyStage, tmp_path / "one")
    records = [json.loads(x) for x in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    assert [r["finite"] for r in records] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert records[-1]["nonfinite_skipped"] == 1
    cfg.toy = {"nan_steps": [3, 4, 5]}
    with pytest.raises(AsukaError, match="non-finite losses in a row.*checkpoint-2"):
        fit(cfg, ToyStage, tmp_path / "three")


def test_sigterm_checkpoints_and_exits(tmp_path):
    cfg = toy_config(max_steps=6, checkpoint_every=100)
    cfg.toy = {"sigterm_at_step": 3}
    out = fit(cfg, ToyStage, tmp_path)
    assert out["finished"] is False and out["step"] == 3
    assert (tmp_path / "checkpoints/checkpoint-3/trainer_state.json").is_file()
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize(
    "override, key",
    [({"max_steps": -1}, "trainer.max_steps"), ({"global_batch": 7}, "trainer.global_batch")],
)
def test_bad_config_fails_before_models(tmp_path, override, key):
    built = []

    def factory(*args):
        built.append(1)
        return ToyStage(*args)

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        fit(toy_config(**override), factory, tmp_path)
    assert not built


def test_resolution_must_divide_by_8(tmp_path):
    cfg = toy_config()
    cfg.resolution = 60
    with pytest.raises(ConfigError, match="'resolution'.*divisible by 8"):
        fit(cfg, ToyStage, tmp_path)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from asuka.training.run_dir import checkpoint as ckpt
    from asuka.training.engine import fit
    from toy_stage import ToyStage, toy_config
    real_save = ckpt.save_torch
    calls = []
    def slow_save(obj, path):
        calls.append(path)
        real_save(obj, path)
        if "checkpoint-4" in str(path) and "optimizer" in str(path):
            print("PAUSED", flush=True)
            time.sleep(600)
    ckpt.save_torch = slow_save
    fit(toy_config(max_steps=6), ToyStage, {run!r})
    """
)


def test_sigkill_during_checkpoint_write_then_resume(tmp_path):
    run = tmp_path / "run"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        line = ""
        while "PAUSED" not in line and time.time() < deadline:
            line = proc.stdout.readline()
        assert "PAUSED" in line, "the training process never reached the checkpoint write"
        proc.kill()  # SIGKILL in the middle of writing checkpoint-4
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "checkpoint-2" in names and "checkpoint-4" not in names  # only a temporary folder for step 4
    out = fit(toy_config(max_steps=6, resume="latest"), ToyStage, run)
    assert out["finished"] and out["step"] == 6
    straight = tmp_path / "straight"
    fit(toy_config(max_steps=6), ToyStage, straight)
    a, b = weights(straight / "final/net"), weights(run / "final/net")
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert not any(p.name.startswith(ckpt.TMP_PREFIX) for p in (run / "checkpoints").iterdir())
    assert math.isfinite(json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["loss"])


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_trackers_receive_the_metrics(tmp_path, monkeypatch, tracker):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = toy_config(max_steps=2, val_every=2)
    cfg.logger = {"tracker": tracker, "project": "asuka-test", "entity": None, "mode": "offline"}
    fit(cfg, ToyStage, tmp_path / "run")
    if tracker == "tensorboard":
        assert list((tmp_path / "run").rglob("events.out.tfevents*"))
    else:
        runs = list(tmp_path.rglob("run-*.wandb"))
        assert runs and runs[0].stat().st_size > 0
