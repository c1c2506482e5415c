"""The data engine end to end: the script, resume after a kill, rank split, unreadable images, refusals, and the
tiny transformers models mining the shipped samples into a manifest the LAR-Gen dataset loads."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from asuka.data.largen_engine.run import finish, mine, mine_shards
from asuka.data.largen_engine.samples import standin_stages, write_sample_scenes
from asuka.data.largen_engine.stages import build_stages
from asuka.data.largen_engine.tiny import build_tiny_models, tiny_model_stages
from asuka.data.largen_engine.standin import TemplateCaptioner
from asuka.data.sharded_folder import pending_shards
from asuka.data.images import list_images
from asuka.data.quadruplets import QuadrupletStore, load_manifest
from asuka.utils.errors import AsukaError, ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
KILL_ENV = "ASUKA_TEST_KILL_AT_CALL"


class KillingCaptioner(TemplateCaptioner):
    """The template captioner, which SIGKILLs its own process at call ``$ASUKA_TEST_KILL_AT_CALL`` (a crash)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, subjects, tags):
        self.calls += 1
        if str(self.calls) == os.environ.get(KILL_ENV):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(subjects, tags)


def _overrides(images, out, *extra):
    return [f"paths.images={images}", f"out={out}", "largen_stages=colour_key", "cpu=true", "num_workers=0",
            "filters.tags.min_score=0.5", "filters.masks.min_score=0.5", *extra]


def _script(images, out, *extra, env=None):
    cmd = [sys.executable, str(REPO / "scripts" / "make_largen_data.py"), *_overrides(images, out, *extra),
           f"hydra.run.dir={Path(out).parent / 'hydra'}"]
    path = os.pathsep.join(str(REPO / "tests" / d) for d in ("data", ""))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _content(root):
    """Every file of a manifest except index.json, as bytes (PNG and JSON content) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file() and p.name != "index.json"}


def test_kill_and_rerun_redoes_only_missing_shards(tmp_path):
    images = tmp_path / "images"
    write_sample_scenes(images, n=5, seed=1, size=64)
    killing = "stages.captioner.kind=test_largen_engine:KillingCaptioner"
    args = ["shard_size=1", "batch_size=1", killing]
    proc = _script(images, tmp_path / "out", *args, env={KILL_ENV: "3"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    done = sorted(p.name for p in (tmp_path / "out").glob("shard_*"))
    assert done == ["shard_00000", "shard_00001"]  # the third image's shard died unwritten
    with pytest.raises(AsukaError, match="unfinished"):
        load_manifest(tmp_path / "out")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file() and "shard_" in str(p)}
    proc = _script(images, tmp_path / "out", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(3 mined by rank 0)" in proc.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished shards untouched
    assert not list((tmp_path / "out").glob(".tmp-*"))
    fresh = _script(images, tmp_path / "fresh", *args)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert _content(tmp_path / "out") == _content(tmp_path / "fresh")
    assert len(load_manifest(tmp_path / "out")) == len(load_manifest(tmp_path / "fresh")) > 0


def test_unreadable_images_are_skipped_counted_and_logged_once(tmp_path):
    images = tmp_path / "images"
    write_sample_scenes(images, n=3, seed=2, size=64)
    (images / "broken_a.png").write_bytes(b"not a png")
    (images / "broken_b.jpg").write_bytes(b"\xff\xd8 truncated")
    proc = _script(images, tmp_path / "out", "shard_size=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (proc.stdout + proc.stderr).count("skipping unreadable image") == 1  # Hydra logs to stdout
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["counts"]["images_seen"] == 5 and index["counts"]["images_unreadable"] == 2
    assert "2 unreadable (e.g. broken_a.png, broken_b.jpg)" in proc.stdout
    quads = load_manifest(tmp_path / "out")
    assert quads and {q.source for q in quads} <= {"scene_00.png", "scene_01.png", "scene_02.png"}
    assert index["counts"]["quadruplets"] == len(quads)


def test_rank_split_gives_the_single_process_manifest(tmp_path):
    images = tmp_path / "images"
    write_sample_scenes(images, n=5, seed=3, size=64)
    cfg = compose_config("make_largen_data", _overrides(images, tmp_path / "single", "shard_size=2"))
    mine(cfg)
    cfg.out = str(tmp_path / "ranks")
    files, stages = list_images(images), build_stages(cfg.stages)
    store = QuadrupletStore(cfg.out)
    for rank in (1, 0):  # each "rank" mines its own shards, in any order
        todo = pending_shards(store, len(files), 2, rank, 2)
        assert todo == [s for s in range(3) if s % 2 == rank]
        mine_shards(store, files, images, stages, cfg, todo, show_progress=False)
    settings = json.loads((tmp_path / "single" / "index.json").read_text())
    settings = {k: v for k, v in settings.items() if k not in ("complete", "shards", "counts")}
    finish(store, settings)
    assert _content(tmp_path / "ranks") == _content(tmp_path / "single")
    assert json.loads((tmp_path / "ranks" / "index.json").read_text()) == \
        json.loads((tmp_path / "single" / "index.json").read_text())


def test_refusals(tmp_path):
    images = tmp_path / "images"
    write_sample_scenes(images, n=2, seed=4, size=64)
    mine(compose_config("make_largen_data", _overrides(images, tmp_path / "out")))
    with pytest.raises(AsukaError, match=f"{tmp_path / 'out'}: a manifest made with other settings \\(shard_size\\)"):
        mine(compose_config("make_largen_data", _overrides(images, tmp_path / "out", "shard_size=1")))
    with pytest.raises(ConfigError, match="paths.images"):
        mine(compose_config("make_largen_data", _overrides(images, tmp_path / "o2", "paths.images=null")))
    with pytest.raises(DataError, match="no such image folder"):
        mine(compose_config("make_largen_data", _overrides(tmp_path / "none", tmp_path / "o3")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        mine(compose_config("make_largen_data", _overrides(tmp_path / "empty", tmp_path / "o4")))


def test_colour_key_config_matches_the_samples_objects():
    cfg = compose_config("make_largen_data", ["largen_stages=colour_key"])
    assert OmegaConf.to_container(cfg.stages, resolve=True) == standin_stages()


def test_tiny_models_mine_the_shipped_samples_into_a_largen_dataset(tmp_path):
    from asuka.training.largen_data import build_quadruplet_dataset

    stages = tiny_model_stages(build_tiny_models(tmp_path / "models"))
    permissive = ["filters.tags.min_score=0", "filters.boxes.min_score=0", "filters.boxes.min_area=0.005",
                  "filters.boxes.max_area=1", "filters.boxes.max_aspect=100", "filters.masks.min_score=-100",
                  "filters.masks.min_area=0.001", "filters.masks.min_fill=0", "filters.masks.min_inside=0",
                  "filters.masks.min_main_component=0", "filters.captions.min_words=1", "shard_size=4", "batch_size=2"]
    cfg = compose_config("make_largen_data", [f"paths.images={REPO / 'data' / 'samples'}", f"out={tmp_path / 'out'}",
                                              "exclude=[masks]", "cpu=true", "num_workers=0", *permissive])
    cfg.stages = OmegaConf.create(stages)
    summary = mine(cfg)
    counts = summary["counts"]
    assert summary["shards"] == 2 and counts["images_seen"] == 8 and counts["tags_kept"] == 8 * 4
    quads = load_manifest(tmp_path / "out")
    assert len(quads) == counts["quadruplets"] > 0
    for q in quads[:5]:
        mask = np.asarray(Image.open(q.mask)) == 255
        assert mask.shape == Image.open(q.scene).size[::-1] and mask.any() and q.caption and q.tag in stages[
            "tagger"]["vocabulary"]
    train = compose_config("train_largen", [f"largen.data={tmp_path / 'out'}"])
    dataset = build_quadruplet_dataset(train)
    assert len(dataset) == len(quads)
    item = dataset[(0, 0)]
    assert item["image"].shape[0] == 3 and item["mask"].shape[0] == 1


def test_torchrun_two_processes_give_the_single_process_manifest(tmp_path):
    """The real launch: torchrun splits the shards over 2 processes (gloo, CPU) and the manifest is byte for byte the
    one a single process writes."""
    images = tmp_path / "images"
    write_sample_scenes(images, n=5, seed=3, size=64)
    mine(compose_config("make_largen_data", _overrides(images, tmp_path / "single", "shard_size=2")))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts" / "make_largen_data.py"), *_overrides(images, tmp_path / "two", "shard_size=2"),
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 shards (2 mined by rank 0)" in proc.stdout + proc.stderr  # rank 1 mined shard 1
    assert _content(tmp_path / "two") == _content(tmp_path / "single")
    assert json.loads((tmp_path / "two" / "index.json").read_text()) == \
        json.loads((tmp_path / "single" / "index.json").read_text())


def test_engine_output_and_model_mistakes_are_one_line(tmp_path):
    """out= that is a file, or cannot be written, and a stage model that cannot be loaded: one line each."""
    from transformers import CLIPModel

    from asuka.data.largen_engine.hf import load_hf

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "a.png")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"config key 'out'.*exists and is not a folder"):
        mine(compose_config("make_largen_data", ["largen_stages=colour_key", f"paths.images={images}",
                                                 f"out={tmp_path / 'file'}"]))
    with pytest.raises(AsukaError, match=r"missing-model: cannot load CLIPModel .*local folder"):
        load_hf(CLIPModel, str(tmp_path / "missing-model"), "cpu", "float32")
