"""Assemble :class:`AsukaFluxFillPipeline` from config: ASUKA-FLUX (released weights converted by
``scripts/convert_asuka.py``, or tiny random parts) and the FLUX.1-Fill-dev baseline (stored prompt, AE decode).

``paths.asuka_flux`` is the converted folder; its parts can be overridden one by one (``mae=``, ``alignment=``,
``alignment_clip=``, ``decoder=``, ``conditions=``). ``model=flux_tiny`` builds every missing part at random.
``recipe=official|ours`` (top-level key, default ours) selects the released script's recipe
(:mod:`asuka.pipelines.pipeline_asuka_flux`), including its fill encoder: the ``encoder.*`` of ``asuka_decoder.ckpt``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import ConditionShapes, backbone_for, is_tiny
from asuka.models.backbones.flux import GUIDANCE, FluxConditions, FluxFill, load_flux_fill
from asuka.models.mae_import import TINY_SEED, load_frozen_mae
from asuka.pipelines.build import freeze_pipeline, load_alignment_folder, load_decoder_folder, load_pipeline, model_block
from asuka.pipelines.pipeline_asuka_flux import CONDITION_WEIGHT, AsukaFluxFillPipeline, check_recipe
from asuka.utils.config import is_given
from asuka.utils.errors import AsukaError, ConfigError
from asuka.utils.safe_load import load_state_dict

# Where each part lies inside paths.asuka_flux (the converter's layout).
LAYOUT = {"mae": "mae", "alignment": "alignment/t5", "alignment_clip": "alignment/clip", "decoder": "decoder",
          "conditions": "conditions"}
# The released condition tensors: ASUKA blends with the null pair, the baseline runs with the stored prompt.
CONDITION_FILES = {"asuka": ("txt_256", "vec"), "baseline": ("txt", "vec")}


def _part(cfg: DictConfig, name: str) -> Path | None:
    """``<name>=`` on the command line, else ``paths.asuka_flux/<layout>`` when that folder is given."""
    if is_given(cfg.get(name)):
        return Path(os.path.expanduser(str(cfg.get(name))))
    root = OmegaConf.select(cfg, "paths.asuka_flux")
    return Path(os.path.expanduser(str(root))) / LAYOUT[name] if is_given(root) else None


def _use(path: Path | None, tiny: bool) -> bool:
    """Read a part from ``path``: always when given with real weights; with tiny parts only when it exists."""
    return path is not None and (not tiny or path.exists())


def _alignment(cfg: DictConfig, name: str, tiny: bool) -> AlignmentModule:
    path = _part(cfg, name)
    if _use(path, tiny):
        return load_alignment_folder(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + (name == "alignment_clip"))
        try:
            return AlignmentModule(**model_block(cfg, name)).eval()
        except TypeError as exc:
            raise ConfigError(f"model.{name}", str(exc)) from None


def _read_tensor(folder: Path, stem: str) -> torch.Tensor:
    for suffix in (".safetensors", ".pt"):
        if (folder / f"{stem}{suffix}").is_file():
            state = load_state_dict(folder / f"{stem}{suffix}")
            tensors = [state] if isinstance(state, torch.Tensor) else [v for v in state.values()
                                                                      if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise AsukaError(f"{folder / (stem + suffix)}: expected one tensor, found {len(tensors)}")
            return tensors[0]
    raise AsukaError(f"{folder}: no {stem}.safetensors or {stem}.pt (the released condition tensors)")


def flux_conditions(cfg: DictConfig, kind: str, shapes: ConditionShapes, tiny: bool) -> FluxConditions:
    """The condition pair of ``kind`` (``asuka``: the null ``txt_256``/``vec``; ``baseline``: the stored prompt ``txt``/
    ``vec``) from the converted folder, or seeded random tensors of the right shapes for tiny parts."""
    folder = _part(cfg, "conditions")
    if _use(folder, tiny):
        txt_name, vec_name = CONDITION_FILES[kind]
        return FluxConditions.from_tensors(_read_tensor(folder, txt_name), _read_tensor(folder, vec_name))
    tokens = int(cfg.model.mae.img_size) // int(cfg.model.mae.patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return FluxConditions.from_tensors(torch.randn(1, tokens ** 2, shapes.token_dim),
                                           torch.randn(1, shapes.pooled_dim))


def _decoder(cfg: DictConfig, vae: Any, tiny: bool, random_decoder: bool) -> Any:
    from asuka.models.decoder import build_decoder

    path = _part(cfg, "decoder")
    if _use(path, tiny):
        return load_decoder_folder(path)
    if random_decoder and tiny:
        decoder_cfg = OmegaConf.create({**model_block(cfg, "decoder"), "source": "tiny", "seed": TINY_SEED})
        return build_decoder(decoder_cfg, vae).eval()
    return None


def build_flux_pipeline(cfg: DictConfig, device: str | torch.device = "cpu", random_decoder: bool = False,
                        baseline: bool = False, folder: Any = None) -> AsukaFluxFillPipeline:
    """ASUKA-FLUX (or, with ``baseline``, FLUX.1-Fill-dev with the stored prompt and its AE) from config, or the
    exported pipeline ``folder``; placed on ``device`` with ``model.flux.offload``, under ``cfg.recipe``."""
    offload = str(cfg.model.flux.get("offload", "none"))
    recipe = check_recipe(cfg.get("recipe") or "ours")
    if folder is not None:
        pipe = load_pipeline(folder, device="cpu", dtype=cfg.model.flux.get("dtype"))
        return place(with_recipe(pipe, recipe), device, offload)
    tiny = is_tiny(cfg)
    if not tiny:  # every ASUKA part is found before the 12B transformer loads
        needed = ("conditions",) if baseline else ("mae", "alignment", "alignment_clip", "conditions")
        missing = [str(p) if p is not None else name for name, p in ((n, _part(cfg, n)) for n in needed)
                   if p is None or not p.exists()]
        if missing:
            raise ConfigError("paths.asuka_flux", f"missing {', '.join(missing)} (give the folder written by "
                                                  "scripts/convert_asuka.py)")
    flux_path = cfg.get("flux") if is_given(cfg.get("flux")) else OmegaConf.select(cfg, "paths.flux_fill")
    comps = load_flux_fill(cfg.model.flux, flux_path, device="cpu")
    shapes = FluxFill().condition_shapes(comps)
    parts: dict[str, Any] = {"mae": None, "alignment": None, "alignment_clip": None, "decoder": None}
    if not baseline:
        mae_path = _part(cfg, "mae")
        # load_frozen_mae reads the tiny flag from model.sd: give it a view with the FLUX backbone's flag
        view = OmegaConf.create({"model": {"mae": model_block(cfg, "mae"), "sd": {"source": "tiny" if tiny else "-"}},
                                 "paths": {"mae": None}})
        parts["mae"] = load_frozen_mae(view, str(mae_path) if _use(mae_path, tiny) else None)
        parts["alignment"] = _alignment(cfg, "alignment", tiny)
        parts["alignment_clip"] = _alignment(cfg, "alignment_clip", tiny)
        parts["decoder"] = _decoder(cfg, comps.vae, tiny, random_decoder)
    pipe = AsukaFluxFillPipeline(transformer=comps.transformer, vae=comps.vae, scheduler=comps.scheduler,
                                 conditions=flux_conditions(cfg, "baseline" if baseline else "asuka", shapes, tiny),
                                 condition_weight=float(cfg.model.get("condition_weight", CONDITION_WEIGHT)),
                                 guidance=float(cfg.model.get("guidance", GUIDANCE)), **parts)
    check_flux_compatible(pipe)
    return place(freeze_pipeline(with_recipe(pipe, recipe)), device, offload)


def with_recipe(pipe: AsukaFluxFillPipeline, recipe: str) -> AsukaFluxFillPipeline:
    """``pipe`` under ``recipe``. ``official`` with an ASUKA decoder also encodes the fill with the decoder's
    ``encoder`` (the release's: test_asuka_flux.py loads ``encoder.*`` of asuka_decoder.ckpt over the FLUX AE). A
    pipeline saved under ``official`` (bf16 prior, replaced encoder) cannot go back to ``ours``."""
    if recipe == pipe.config.recipe:
        return pipe
    if pipe.config.recipe == "official":
        raise ConfigError("recipe", "this pipeline was saved with recipe=official (bf16 MAE and heads, the "
                                    "release's encoder); rebuild it from the converted folder for recipe=ours")
    if pipe.decoder is not None:
        use_release_encoder(pipe.vae, pipe.decoder)
    return AsukaFluxFillPipeline(**pipe.components, condition_weight=pipe.config.condition_weight,
                                 guidance=pipe.config.guidance, recipe=recipe)


def use_release_encoder(vae: Any, decoder: Any) -> None:
    """Load the ASUKA decoder's AE encoder (the converted ``encoder.*`` of asuka_decoder.ckpt) into ``vae``."""
    theirs = decoder.encoder.state_dict()
    ours = vae.encoder.state_dict()
    bad = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
    if bad or len(theirs) != len(ours):
        raise ConfigError("model.decoder", f"the decoder's encoder does not fit the FLUX AE encoder ({len(bad)} "
                                           f"keys differ, e.g. {bad[:1]})")
    vae.encoder.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})


OFFLOAD = ("none", "model", "sequential")


def place(pipe: AsukaFluxFillPipeline, device: str | torch.device, offload: str = "none") -> AsukaFluxFillPipeline:
    """Move to ``device``; on a GPU, ``offload=model`` keeps each part on the CPU until it runs (a 24 GB card holds
    the bf16 transformer alone) and ``sequential`` streams the weights layer by layer (least memory, slowest)."""
    if offload not in OFFLOAD:
        raise ConfigError("model.flux.offload", f"unknown value '{offload}', expected one of {', '.join(OFFLOAD)}")
    if offload == "none" or torch.device(device).type != "cuda":
        return pipe.to(device)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe


def check_flux_compatible(pipe: AsukaFluxFillPipeline) -> None:
    """MAE width -> both heads; heads -> the transformer's token and pooled widths; stored conditions alike."""
    cfg = pipe.transformer.config
    want = {"alignment": int(cfg.joint_attention_dim), "alignment_clip": int(cfg.pooled_projection_dim)}
    if int(pipe.conditions.config.txt_dim) != want["alignment"] or int(pipe.conditions.config.vec_dim) != \
            want["alignment_clip"]:
        raise ConfigError("paths.asuka_flux", f"condition tensors are {pipe.conditions.config.txt_dim}/"
                          f"{pipe.conditions.config.vec_dim} wide; the transformer takes {want['alignment']}/"
                          f"{want['alignment_clip']}")
    if not pipe.uses_prior:
        return
    for name, width in want.items():
        head = getattr(pipe, name)
        if head is None:
            raise ConfigError(f"model.{name}", "ASUKA-FLUX needs both alignment heads")
        if int(head.config.in_dim) != int(pipe.mae.config.decoder_embed_dim):
            raise ConfigError(f"model.{name}.in_dim", f"is {head.config.in_dim} but the MAE prior has width "
                              f"{pipe.mae.config.decoder_embed_dim}")
        if int(head.config.out_dim) != width:
            raise ConfigError(f"model.{name}.out_dim", f"is {head.config.out_dim} but the transformer takes {width}")
    if pipe.decoder is not None and int(pipe.decoder.config.latent_channels) != int(pipe.vae.config.latent_channels):
        raise ConfigError("model.decoder", "the decoder's latent channels differ from the FLUX AE's")


def with_flux_model(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a FLUX model block: as is under ``model=flux_*``; else (an SD model, e.g. the demo's tiny one)
    ``configs/model/flux_tiny.yaml`` for tiny models and ``flux_fill.yaml`` otherwise (``method=asuka_flux``)."""
    if backbone_for(cfg.model).name == FluxFill.name:
        return cfg
    name = "flux_tiny" if is_tiny(cfg) else "flux_fill"
    out = cfg.copy()
    with open_dict(out):
        out.model = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / f"{name}.yaml")
    return out
