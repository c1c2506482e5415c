"""Stage 3: the inpainting-specialised, mask-conditioned decoder (Asymmetric VQGAN; diffusers
``AsymmetricAutoencoderKL``).

The decoder sees the latent AND the known pixels, so it can keep the unmasked region and the colours at the hole
boundary faithful. It is initialised either from released Asymmetric VQGAN weights or from the SD VAE itself (the
main decoder path copied, the condition encoder new), so training starts from SD's decoder.

Facts about diffusers' implementation this module relies on (checked in diffusers 0.42):
- ``MaskConditionDecoder`` names its main path like ``Decoder`` does (``conv_in``, ``mid_block``, ``up_blocks.i.
  resnets.j`` / ``upsamplers.0``, ``conv_norm_out``, ``conv_out``), plus ``condition_encoder.*``.
- Both build ``layers_per_block + 1`` resnets per up block, so ``layers_per_up_block`` must EQUAL the SD VAE's
  ``layers_per_block`` (2 for SD-1.5: 3 resnets per up level). A value of 3 builds 4 resnets (the released
  Asymmetric VQGAN x1.5/x2 decoders) and cannot take SD's weights.
- Its condition encoder sees only the masked image ``(1 - m) x`` (3 channels), and at the input of every up block
  features are blended ``h * m + cond * (1 - m)`` with the mask resized by nearest neighbour. The official ASUKA
  decoder concatenates the mask to the condition and blends with the area-downsampled mask > 0; ``model.decoder.
  condition_mask_channel`` and ``fusion_mask`` select that (:mod:`asuka.models.condition_decoder`, the default in
  ``configs/model``). With an all-ones mask (all hole) every blend is ``h * 1 + cond * 0 == h`` exactly (for finite
  ``cond``), so the decode equals the SD VAE's decode bit for bit in either variant.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import AsymmetricAutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
# diffusers' pipeline loader looks a component's base class up by name in the component's own module:
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401
from omegaconf import DictConfig
from torch import nn

from asuka.models.condition_decoder import FUSION_MASKS, AsukaMaskConditionDecoder
from asuka.utils.errors import AsukaError, ConfigError

_SOURCES = ("pretrained", "from_sd_vae", "tiny")


class AsukaDecoder(AsymmetricAutoencoderKL):
    """``AsymmetricAutoencoderKL`` with checked inputs, a forward that can take a latent from elsewhere, and the
    official ASUKA condition path when ``condition_mask_channel`` / ``fusion_mask="area_any"`` are set
    (:mod:`asuka.models.condition_decoder`; the defaults are diffusers' Asymmetric VQGAN, so its released configs
    load unchanged). ``use_quant_conv`` / ``use_post_quant_conv`` false express an AE without those 1x1 convs
    (FLUX's); ``decode`` takes the AE's raw latents (for FLUX, the pipeline's ``z / 0.3611 + 0.1159``).

    An importable ``asuka`` class, so a diffusers pipeline holding it round-trips through ``save_pretrained``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        down_block_out_channels: tuple[int, ...] = (64,),
        layers_per_down_block: int = 1,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        up_block_out_channels: tuple[int, ...] = (64,),
        layers_per_up_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        condition_mask_channel: bool = False,
        fusion_mask: str = "nearest",
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        block_out_channels: tuple[int, ...] | None = None,
        force_upcast: bool = False,
    ) -> None:
        # block_out_channels / force_upcast: the base class writes them into every config (= up_block_out_channels,
        # False); accepted here only so that loading a saved folder does not warn that they "will be ignored".
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            down_block_out_channels=down_block_out_channels, layers_per_down_block=layers_per_down_block,
            up_block_types=up_block_types, up_block_out_channels=up_block_out_channels,
            layers_per_up_block=layers_per_up_block, act_fn=act_fn, latent_channels=latent_channels,
            norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
        )
        if condition_mask_channel or fusion_mask != "nearest":
            self.decoder = AsukaMaskConditionDecoder(
                in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
                block_out_channels=up_block_out_channels, layers_per_block=layers_per_up_block, act_fn=act_fn,
                norm_num_groups=norm_num_groups, mask_channel=condition_mask_channel, fusion=fusion_mask,
            )
        if not use_quant_conv:  # e.g. FLUX's AE: the encoder's moments and the decoder's input are used as they are
            self.quant_conv = nn.Identity()
        if not use_post_quant_conv:
            self.post_quant_conv = nn.Identity()

    def _check_condition(self, z: torch.Tensor, image: torch.Tensor | None, mask: torch.Tensor | None) -> None:
        """Fail with a clear message where diffusers would silently skip the condition or raise a KeyError."""
        if (image is None) != (mask is None):
            raise ValueError("AsukaDecoder.decode: pass both image and mask (or neither)")
        if image is None:
            return
        scale = 2 ** (len(self.config.up_block_out_channels) - 1)
        expected = (z.shape[0], z.shape[-2] * scale, z.shape[-1] * scale)
        if image.ndim != 4 or (image.shape[0], *image.shape[-2:]) != expected:
            shape = f"[{expected[0]}, 3, {expected[1]}, {expected[2]}]"
            raise ValueError(f"image must be {shape}, got {tuple(image.shape)}")
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask must be [B, 1, H, W] like the image, got {tuple(mask.shape)}")

    def decode(
        self,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """diffusers' signature: ``image`` in [-1, 1] supplies the known pixels, ``mask`` 1 = hole."""
        self._check_condition(z, image, mask)
        if mask is not None:
            mask = mask.to(dtype=image.dtype)
        return super().decode(z, generator=generator, image=image, mask=mask, return_dict=return_dict)

    def forward(
        self,
        sample: torch.Tensor,
        mask: torch.Tensor | None = None,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """diffusers' forward (encode ``sample``, decode conditioned on ``sample`` and ``mask``); with ``latents``
        given, those are decoded instead of encoding ``sample``.

        Training goes through ``forward`` (not ``decode``) so that a DDP wrapper sees the call; it passes latents of
        a colour-augmented or latent-augmented image while ``sample`` stays the original image.
        """
        if latents is None:
            posterior = self.encode(sample).latent_dist
            latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(latents, generator, sample, mask, return_dict=return_dict)


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def decoder_kwargs(decoder_cfg: DictConfig, latent_channels: int = 4, scaling_factor: float = 0.18215) -> dict:
    """``AsymmetricAutoencoderKL`` constructor arguments from a ``model.decoder`` block."""
    up = [int(c) for c in decoder_cfg.up_block_out_channels]
    down = [int(c) for c in decoder_cfg.down_block_out_channels]
    if len(up) != len(down):
        raise ConfigError("model.decoder.up_block_out_channels", "needs as many levels as down_block_out_channels")
    groups = int(_cfg_get(decoder_cfg, "norm_num_groups", 32))
    for key, widths in (("up_block_out_channels", up), ("down_block_out_channels", down)):
        if any(w % groups for w in widths):
            raise ConfigError(f"model.decoder.{key}", f"every width must be divisible by norm_num_groups={groups}")
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(down),
        down_block_out_channels=tuple(down),
        layers_per_down_block=int(decoder_cfg.layers_per_down_block),
        up_block_types=("UpDecoderBlock2D",) * len(up),
        up_block_out_channels=tuple(up),
        layers_per_up_block=int(decoder_cfg.layers_per_up_block),
        act_fn="silu",
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=int(_cfg_get(decoder_cfg, "sample_size", 256)),
        scaling_factor=scaling_factor,
        **condition_options(decoder_cfg),
    )


def condition_options(decoder_cfg: Any) -> dict[str, Any]:
    """``condition_mask_channel`` and ``fusion_mask`` from a ``model.decoder`` block (official ASUKA: true,
    area_any; diffusers' Asymmetric VQGAN: false, nearest)."""
    fusion = str(_cfg_get(decoder_cfg, "fusion_mask", "nearest"))
    if fusion not in FUSION_MASKS:
        raise ConfigError("model.decoder.fusion_mask", f"must be one of {', '.join(FUSION_MASKS)}, got {fusion!r}")
    return {"condition_mask_channel": bool(_cfg_get(decoder_cfg, "condition_mask_channel", False)),
            "fusion_mask": fusion}


def _check_matches_vae(kwargs: dict, sd_vae: nn.Module) -> None:
    """The copied layers must have the same shapes: compare the widths and depths with the VAE's config."""
    vc = sd_vae.config
    widths = tuple(int(c) for c in vc.block_out_channels)
    checks = {
        "down_block_out_channels": (kwargs["down_block_out_channels"], widths),
        "up_block_out_channels": (kwargs["up_block_out_channels"], widths),
        "layers_per_down_block": (kwargs["layers_per_down_block"], int(vc.layers_per_block)),
        # Decoder and MaskConditionDecoder both build layers_per_block + 1 resnets per up block.
        "layers_per_up_block": (kwargs["layers_per_up_block"], int(vc.layers_per_block)),
        "norm_num_groups": (kwargs["norm_num_groups"], int(vc.norm_num_groups)),
    }
    for key, (ours, theirs) in checks.items():
        if ours != theirs:
            hint = " (diffusers builds layers_per_up_block + 1 resnets per level, like the VAE's Decoder)" if (
                key == "layers_per_up_block"
            ) else ""
            raise ConfigError(f"model.decoder.{key}", f"is {ours} but the SD VAE has {theirs}{hint}")
    if not vc.get("mid_block_add_attention", True):
        raise ConfigError(
            "model.decoder", "the SD VAE has no mid-block attention; AsymmetricAutoencoderKL always has one"
        )


def copy_sd_vae_weights(decoder: AsukaDecoder, sd_vae: nn.Module) -> list[str]:
    """Copy the SD VAE's encoder, quant_conv, post_quant_conv and decoder main path into ``decoder``.

    Returns the names left at their initialisation, which must be exactly the condition encoder's.
    """
    source = sd_vae.state_dict()
    target = decoder.state_dict()
    new = {}
    for name, tensor in target.items():
        if name.startswith("decoder.condition_encoder."):
            continue
        if name not in source:
            raise AsukaError(f"cannot initialise the decoder from the SD VAE: it has no weight '{name}'")
        if source[name].shape != tensor.shape:
            raise AsukaError(
                f"cannot initialise the decoder from the SD VAE: '{name}' is {tuple(source[name].shape)} in the VAE "
                f"and {tuple(tensor.shape)} in the decoder"
            )
        new[name] = source[name]
    unused = sorted(set(source) - set(new))
    if unused:
        raise AsukaError(f"the SD VAE has weights the decoder lacks: {unused[:5]}")
    missing, unexpected = decoder.load_state_dict(new, strict=False)
    assert not unexpected
    return sorted(missing)


def _load_pretrained(init_path: str | None) -> AsukaDecoder:
    if not init_path:
        raise ConfigError(
            "paths.decoder_init",
            "model.decoder.source=pretrained needs the released Asymmetric VQGAN weights (a diffusers "
            "AsymmetricAutoencoderKL folder)",
        )
    path = Path(str(init_path)).expanduser()
    looks_local = path.exists() or str(init_path).startswith((".", "/", "~")) or str(init_path).count("/") != 1
    if looks_local and not (path / "config.json").is_file():
        raise AsukaError(f"{path}: no decoder weights here (expected a diffusers folder with config.json)")
    try:
        return AsukaDecoder.from_pretrained(str(path) if looks_local else str(init_path))
    except (OSError, ValueError) as exc:
        raise AsukaError(f"{init_path}: cannot load decoder weights ({str(exc).splitlines()[0]})") from None


def build_decoder(
    decoder_cfg: DictConfig, sd_vae: nn.Module | None = None, init_path: str | None = None
) -> AsukaDecoder:
    """Build the stage-3 decoder from ``model.decoder`` (``source``: pretrained | from_sd_vae | tiny); a given
    ``init_path`` (released Asymmetric VQGAN weights in diffusers format) means ``pretrained``.

    ``from_sd_vae`` copies the SD VAE (required); ``tiny`` copies it when given and is random otherwise. New weights
    (the condition encoder) come from a fixed seed (``model.decoder.seed``, default 0) without touching the global
    RNG. The encoder and quant_conv are frozen in every case.
    """
    source = str(_cfg_get(decoder_cfg, "source", "from_sd_vae"))
    if init_path not in (None, "", "None", "null"):
        source = "pretrained"  # released weights, when given (paths.decoder_init), are where training starts
    if source not in _SOURCES:
        raise ConfigError("model.decoder.source", f"unknown source '{source}' ({' | '.join(_SOURCES)})")
    if source == "pretrained":
        decoder = with_condition_options(_load_pretrained(init_path), condition_options(decoder_cfg), init_path)
        if sd_vae is not None and int(decoder.config.latent_channels) != int(sd_vae.config.latent_channels):
            raise AsukaError(
                f"{init_path}: decoder takes {decoder.config.latent_channels}-channel latents, the SD VAE makes "
                f"{sd_vae.config.latent_channels}"
            )
    else:
        if source == "from_sd_vae" and sd_vae is None:
            raise AsukaError("model.decoder.source=from_sd_vae needs the SD VAE (model.sd / paths.sd_inpaint)")
        latent_channels = int(sd_vae.config.latent_channels) if sd_vae is not None else 4
        scaling = float(sd_vae.config.scaling_factor) if sd_vae is not None else 0.18215
        kwargs = decoder_kwargs(decoder_cfg, latent_channels, scaling)
        if sd_vae is not None:
            kwargs["sample_size"] = int(_cfg_get(sd_vae.config, "sample_size", kwargs["sample_size"]))
            for key in ("use_quant_conv", "use_post_quant_conv"):  # FLUX's AE has neither
                kwargs[key] = bool(_cfg_get(sd_vae.config, key, True))
            _check_matches_vae(kwargs, sd_vae)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(_cfg_get(decoder_cfg, "seed", 0)))
            decoder = AsukaDecoder(**kwargs)
        if sd_vae is not None:
            copy_sd_vae_weights(decoder, sd_vae)
    freeze_encoder(decoder)
    return decoder


def with_condition_options(decoder: AsukaDecoder, options: dict[str, Any], where: Any = None) -> AsukaDecoder:
    """``decoder`` with the condition path ``options`` asks for. Released Asymmetric VQGAN weights (a 3-channel
    condition encoder) gain a mask channel whose input weights start at zero, so the adapted decoder computes
    exactly what the released one did until training moves them; weights that condition on the mask cannot drop it.
    """
    current = {key: decoder.config[key] for key in options}
    if current == options:
        return decoder
    if current["condition_mask_channel"] and not options["condition_mask_channel"]:
        raise ConfigError("model.decoder.condition_mask_channel",
                          f"is false but the weights at {where} condition on the mask (a 4-channel condition encoder)")
    adapted = AsukaDecoder.from_config(decoder.config, **options)
    state = decoder.state_dict()
    key = "decoder.condition_encoder.layers.0.weight"
    if options["condition_mask_channel"] and not current["condition_mask_channel"]:
        weight = state[key]
        state[key] = torch.cat([weight, weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])], dim=1)
    adapted.load_state_dict(state)
    return adapted


def freeze_encoder(decoder: AsukaDecoder) -> AsukaDecoder:
    """The SD VAE encoder (and quant_conv) stays fixed: the latents the UNet was trained on must not move."""
    decoder.encoder.requires_grad_(False)
    decoder.quant_conv.requires_grad_(False)
    return decoder


def trainable_decoder_parameters(decoder: AsukaDecoder) -> Iterator[nn.Parameter]:
    """What stage 3 trains: the decoder (main path + condition encoder) and post_quant_conv."""
    yield from decoder.post_quant_conv.parameters()
    yield from decoder.decoder.parameters()
