"""Stage-2 precomputed VAE latents: the cache holds the VAE's own posterior of every epoch-0 sample, two processes
build the same cache as one, a step read from it equals a step that encodes (and encodes nothing), resume stays
exact, and a cache made for other data is refused with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, compose_config  # noqa: E402
from resume_check import assert_resume_exact  # noqa: E402

from asuka.data.datasets import build_train_dataset, collate  # noqa: E402
from asuka.data.latent_cache import shard_name  # noqa: E402
from asuka.data.sharded_folder import INDEX_FILE  # noqa: E402
from asuka.models.sd import load_sd_inpaint  # noqa: E402
from asuka.training.align import AlignStage  # noqa: E402
from asuka.training.align_latents import build_align_latents, files_fingerprint, open_align_latents  # noqa: E402
from asuka.utils.errors import AsukaError  # noqa: E402


def cache_config(out: Path, *overrides: str):
    cfg = compose_config(
        "make_align_latents",
        ["experiment=demo", f"paths.align_latents={out}", "shard_size=3", "batch_size=2", "num_workers=0",
         "dtype=float32", "vae_dtype=float32", *overrides],
    )
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("align_latents") / "cache"
    cfg = cache_config(out)
    return cfg, out, build_align_latents(cfg)


def test_cache_holds_the_vae_posterior_of_each_epoch0_sample(built):
    cfg, out, summary = built
    base = build_train_dataset(cfg)
    assert len(base) == 8 and summary["shards"] == 3 and summary["missing"] == 0
    vae = load_sd_inpaint(cfg.model.sd, cfg.paths.sd_inpaint, "cpu", torch.float32, parts=("vae",)).vae
    cache = open_align_latents(cfg, base)
    for index in range(len(base)):
        sample = base[(0, index)]
        holes = sample["mask"] >= 0.5
        with torch.no_grad():
            image = vae.encode(sample["image"][None]).latent_dist
            masked = vae.encode(torch.where(holes, 0.0, sample["image"])[None]).latent_dist
        expected = torch.cat([image.mean, image.logvar, masked.mean, masked.logvar], dim=1)[0]
        torch.testing.assert_close(cache.get(index), expected, atol=1e-4, rtol=1e-4)


def _stage(cfg) -> AlignStage:
    torch.manual_seed(0)
    return AlignStage(cfg, torch.device("cpu"), torch.float32)


def test_a_cached_step_equals_an_encoding_step_and_encodes_nothing(built, monkeypatch):
    cfg, out, _ = built
    plain = _stage(compose_config("train_align", ["experiment=demo"]))
    cached = _stage(compose_config("train_align", ["experiment=demo", f"paths.align_latents={out}"]))
    cached.trainable["alignment"].load_state_dict(plain.trainable["alignment"].state_dict())
    batch = collate([cached.train_dataset()[(7, i)] for i in (0, 5)])  # any epoch reads epoch 0's samples
    base = plain.train_dataset()
    assert torch.equal(batch["image"], torch.stack([base[(0, i)]["image"] for i in (0, 5)]))
    assert torch.equal(batch["mask"], torch.stack([base[(0, i)]["mask"] for i in (0, 5)]))
    plain_batch = {k: v for k, v in batch.items() if k != "moments"}

    def no_encoding(*args, **kwargs):
        raise AssertionError("the VAE encoder ran although the latents are cached")

    torch.manual_seed(1)
    expected = plain.training_step(plain_batch, step=3000).losses["alignment"]
    monkeypatch.setattr(cached.sd.vae, "encode", no_encoding)
    torch.manual_seed(1)
    got = cached.training_step(batch, step=3000).losses["alignment"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_resume_with_cached_latents_is_exact(built, tmp_path):
    _, out, _ = built
    cfg = compose_config("train_align", ["experiment=demo", f"paths.align_latents={out}", "trainer.max_steps=4",
                                         "trainer.checkpoint_every=2", "trainer.val_every=100"])
    assert_resume_exact(cfg, AlignStage, "alignment", tmp_path, stop_at=2)


def test_a_cache_for_other_data_is_refused(built, tmp_path):
    cfg, out, _ = built
    base = build_train_dataset(cfg)
    other = cache_config(out, "seed=1")
    with pytest.raises(AsukaError, match=r"other data \(seed: 0 in the cache, 1 here\).*make_align_latents.py"):
        open_align_latents(other, build_train_dataset(other))
    with pytest.raises(AsukaError, match="no stage-2 latent cache here"):
        open_align_latents(cache_config(tmp_path / "nowhere"), base)
    with pytest.raises(AsukaError, match="other settings.*dtype"):  # a rebuild into the same folder must match
        build_align_latents(cache_config(out, "dtype=float16"))


def test_the_files_fingerprint_follows_the_files_not_the_folder():
    def items(root: str, names: list[str]):
        return SimpleNamespace(items=[SimpleNamespace(image=Path(root) / n) for n in names])

    names = ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert files_fingerprint(items("/data/places", names)) == files_fingerprint(items("/scratch/copy", names))
    assert files_fingerprint(items("/data", names)) != files_fingerprint(items("/data", names[::-1]))
    assert files_fingerprint(items("/data", names)) != files_fingerprint(items("/data", names[:2] + ["b/4.jpg"]))


def test_scripts_build_then_refuse_a_mismatched_training_run_then_train(tmp_path):
    cache = tmp_path / "cache"

    def script(name: str, *overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "scripts" / name), "experiment=demo",
                               f"paths.align_latents={cache}", *overrides],
                              capture_output=True, text=True, timeout=600)

    built = script("make_align_latents.py", f"hydra.run.dir={tmp_path / 'build'}")
    assert built.returncode == 0, built.stderr[-3000:]
    assert "1 shards, 1 written by rank 0, 0 samples without latents" in built.stdout
    refused = script("train_align.py", "resolution=32", f"hydra.run.dir={tmp_path / 'train'}")
    assert refused.returncode == 2
    error = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "resolution: 64 in the cache, 32 here" in error[0], refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    run_dir = tmp_path / "train_ok"
    trained = script("train_align.py", "trainer.max_steps=2", "trainer.checkpoint_every=2", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2] and (run_dir / "final/alignment/config.json").is_file()


def test_two_processes_build_the_same_cache(built, tmp_path):
    """torchrun with 2 processes: rank r computes shards s with s % 2 == r, and the result is the 1-process cache."""
    cfg, out, _ = built
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts/make_align_latents.py"), "experiment=demo", f"paths.align_latents={two}",
           "shard_size=3", "batch_size=2", "num_workers=0", "dtype=float32", "vae_dtype=float32",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 shards, 2 written by rank 0" in proc.stdout  # shards 0 and 2; rank 1 wrote shard 1
    assert json.loads((two / INDEX_FILE).read_text()) == json.loads((out / INDEX_FILE).read_text())
    for shard in range(3):
        one_proc, two_proc = load_file(str(out / shard_name(shard))), load_file(str(two / shard_name(shard)))
        assert one_proc.keys() == two_proc.keys()
        for key in one_proc:
            torch.testing.assert_close(two_proc[key], one_proc[key], atol=1e-4, rtol=1e-4)
