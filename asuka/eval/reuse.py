"""Predictions are reused only by the settings that made them: ``<run>/predictions.settings.json`` records what
made ``<run>/predictions/``, and a run with other settings is refused in one line (or ``overwrite=true``
regenerates), so a result is never labelled with settings that did not make it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from asuka.utils.errors import ConfigError

# paths.* that only the metrics read: they do not change the predictions
METRIC_PATHS = ("inception", "lpips_dir", "clip", "dino")


def prediction_settings(cfg: DictConfig) -> dict[str, Any]:
    """Everything that decides the predicted pixels: method, models, weights, dataset, sampling and recipe."""
    pick = {key: OmegaConf.select(cfg, key) for key in ("method", "model", "dataset", "largen", "pipeline",
                                                            "resolution", "seed", "num_inference_steps", "recipe")}
    paths = OmegaConf.to_container(cfg.paths, resolve=True) if "paths" in cfg else {}
    pick["paths"] = {k: v for k, v in paths.items() if k not in METRIC_PATHS}
    resolved = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in pick.items()}
    return json.loads(json.dumps(resolved, sort_keys=True, default=str))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} was {a!r}, now {b!r}")
    return out


def check_reuse(cfg: DictConfig, out_dir: Path) -> None:
    """Refuse (or with ``overwrite=true`` clear) predictions in ``out_dir`` made with other settings; record ours."""
    record = out_dir.with_name(f"{out_dir.name}.settings.json")
    settings = prediction_settings(cfg)
    made = sorted(out_dir.glob("*.png")) if out_dir.is_dir() else []
    if made:
        saved = json.loads(record.read_text()) if record.is_file() else None
        if saved != settings:
            why = "; ".join(_differences(saved, settings)[:3]) if saved else f"no {record.name} records them"
            if not bool(cfg.get("overwrite", False)):
                raise ConfigError("hydra.run.dir", f"{out_dir} holds {len(made)} predictions made with other "
                                                   f"settings ({why}): evaluate in another hydra.run.dir, or "
                                                   "overwrite=true to generate them again")
            for png in made:
                png.unlink()
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
