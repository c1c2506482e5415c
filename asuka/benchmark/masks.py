"""task=masks: masks per second of the training mixture against a LaMa-style anchor."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from asuka.benchmark.common import BenchEnv


def masks(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Masks per second of the training mixture (``configs/mask``) at ``size`` on one core, side by side with a
    LaMa-style irregular + box generator (``asuka.benchmark.lama_anchor``, ``masks.anchor``).

    Rates are counted in this process's CPU time (other jobs on a shared machine do not lower them), in
    interleaved rounds so both generators see the same machine, under two random-number regimes, each the same
    for both: ``stream`` (one generator for the whole run, as LaMa draws from the global numpy state) and
    ``seeded`` (a fresh ``sample_rng(seed, round, index)`` per mask, as our datasets seed each sample; the
    seeding's ~10 us is then counted too). ``masks_per_s_wall`` is wall-clock over the mixture alone.
    """
    from asuka.benchmark.lama_anchor import LamaStyleAnchor
    from asuka.data.masks import build_mask_generator
    from asuka.data.seeding import sample_rng

    mcfg = cfg.get("masks") or {}
    n = int(mcfg.get("n", 200))
    generator = build_mask_generator(cfg.mask, cfg.paths)
    anchor = LamaStyleAnchor(env.size) if bool(mcfg.get("anchor", True)) else None
    size = env.size
    runs = {"mixed": lambda rng: generator(rng, size, size), **({"anchor": anchor} if anchor is not None else {})}
    generator(np.random.default_rng(env.seed), size, size)  # warm-up
    rounds = max(1, min(5, n))
    cpu = {(name, regime): 0.0 for name in runs for regime in ("stream", "seeded")}
    streams = {name: np.random.default_rng([env.seed, k]) for k, name in enumerate(runs)}
    for r in range(rounds):
        chunk = range(r * n // rounds, (r + 1) * n // rounds)
        for k, (name, draw) in enumerate(runs.items()):
            start = time.process_time()
            for _ in chunk:
                draw(streams[name])
            cpu[name, "stream"] += time.process_time() - start
            start = time.process_time()
            for i in chunk:
                draw(sample_rng(env.seed + k, 0, i))
            cpu[name, "seeded"] += time.process_time() - start
    kinds: dict[str, int] = {}
    holes = []
    start = time.perf_counter()
    for i in range(n):
        out = generator(sample_rng(env.seed, 1, i), size, size)
        mask, kind = out if isinstance(out, tuple) else (out, "mixed")
        kinds[kind] = kinds.get(kind, 0) + 1
        holes.append(float(np.mean(mask)))
    wall = time.perf_counter() - start
    object_source = OmegaConf.to_container(cfg.mask.get("object_source", {}), resolve=True) or {}
    synthetic = not object_source.get("coco_instances") and not object_source.get("mask_dir")
    rate = {key: n / max(seconds, 1e-9) for key, seconds in cpu.items()}
    result = {"masks_per_s": rate["mixed", "seeded"], "masks_per_s_stream": rate["mixed", "stream"],
              "masks_per_s_wall": n / wall, "anchor_masks_per_s": None, "anchor_masks_per_s_seeded": None,
              "ratio_to_anchor": None, "ratio_to_anchor_seeded": None}
    if anchor is not None:
        result.update(anchor_masks_per_s=rate["anchor", "stream"], anchor_masks_per_s_seeded=rate["anchor", "seeded"],
                      ratio_to_anchor=rate["mixed", "stream"] / rate["anchor", "stream"],
                      ratio_to_anchor_seeded=rate["mixed", "seeded"] / rate["anchor", "seeded"])
    return {**result, "n": n, "kinds": kinds, "hole_ratio_mean": float(np.mean(holes)),
            "object_shapes": "synthetic" if synthetic else "files"}
