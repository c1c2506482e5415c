"""Stage 3 as a user runs it: the latent-augmentation script (then, in process, a second build that finds every
shard done), then the decoder training script on that cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, compose_config  # noqa: E402

from asuka.training.latent_aug import build_latent_cache  # noqa: E402


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "experiment=demo", *overrides],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_latent_cache_then_decoder_training(tmp_path):
    cache = tmp_path / "cache"
    first = run("make_latent_aug.py", f"paths.latent_cache={cache}", f"hydra.run.dir={tmp_path / 'la1'}")
    assert (cache / "index.json").is_file() and list(cache.glob("shard_*.safetensors"))
    assert "1 shards, 1 written by rank 0, 0 unreadable images" in first.stdout  # 8 samples, one shard
    again = build_latent_cache(compose_config("make_latent_aug", ["experiment=demo", f"paths.latent_cache={cache}"]))
    assert again["shards"] == 1 and again["written"] == 0  # resumable: nothing left to compute
    run_dir = tmp_path / "decoder"
    run("train_decoder.py", f"paths.latent_cache={cache}", f"hydra.run.dir={run_dir}", "trainer.max_steps=2",
        "trainer.checkpoint_every=2")
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2]
    assert (run_dir / "final/decoder/config.json").is_file()
    assert (run_dir / "checkpoints/checkpoint-2/discriminator").is_dir()
