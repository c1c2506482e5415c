"""The released ASUKA decoder (``asuka_decoder.ckpt``, LDM layout) -> :class:`AsukaDecoder`.

The Lightning checkpoint's ``state_dict`` holds ``encoder.*`` (the AE encoder, LDM/BFL layout), ``decoder.*`` (the
official ``ldm/modules/diffusionmodules/asuka_decoder.py`` ``Decoder``) and possibly training-only entries (losses).
The LDM names map to diffusers' the way diffusers' ``convert_ldm_vae_checkpoint`` maps a VAE: ``up.{i}`` ->
``up_blocks.{L-1-i}``, ``down.{i}`` -> ``down_blocks.{i}``, ``block.{j}`` -> ``resnets.{j}``, ``nin_shortcut`` ->
``conv_shortcut``, ``mid.attn_1`` 1x1 convs -> linear ``to_q/to_k/to_v/to_out.0``; ``decoder.encoder.layers.*`` is
the condition encoder (``decoder.condition_encoder.layers.*``); ``decoder.up_layers.*`` (ConvTranspose2d modules the
official code builds for channel bookkeeping and never calls) are dropped. The widths are read from the weights and
checked against ``model.decoder``; a latent width of 16 means FLUX's AE (no quant/post-quant convs, scaling 0.3611),
4 means SD's (both convs, scaling 0.18215).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from asuka.models.convert.strict import build_and_load
from asuka.models.decoder import AsukaDecoder
from asuka.utils.errors import AsukaError, ConfigError

#: AE constants per latent width: (scaling_factor, has quant/post-quant convs). The FLUX shift (0.1159) is applied
#: by the pipeline with the AE's config (``z / 0.3611 + 0.1159``); the decoder takes raw AE latents.
LATENT_KINDS = {16: (0.3611, False), 4: (0.18215, True)}
_MID = {"block_1": "resnets.0", "block_2": "resnets.1", "attn_1.norm": "attentions.0.group_norm",
        "attn_1.q": "attentions.0.to_q", "attn_1.k": "attentions.0.to_k", "attn_1.v": "attentions.0.to_v",
        "attn_1.proj_out": "attentions.0.to_out.0"}
_ENDS = {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}


def _resnet(rest: str) -> str:
    return rest.replace("nin_shortcut", "conv_shortcut")


def _map_trunk(rest: str, levels: int, up: bool) -> str | None:
    """One LDM encoder/decoder key (without its prefix) -> diffusers', or None when it is not a trunk key."""
    head, _, tail = rest.partition(".")
    if head in _ENDS:
        return f"{_ENDS[head]}.{tail}"
    if head == "mid":
        for old, new in _MID.items():
            if tail.startswith(old + "."):
                return f"mid_block.{new}.{_resnet(tail[len(old) + 1:])}"
        return None
    match = re.match(r"^(up|down)\.(\d+)\.(block\.(\d+)|upsample|downsample)\.(.+)$", rest)
    if not match or (match.group(1) == "up") != up:
        return None
    level = levels - 1 - int(match.group(2)) if up else int(match.group(2))
    blocks = "up_blocks" if up else "down_blocks"
    if match.group(4) is not None:
        return f"{blocks}.{level}.resnets.{match.group(4)}.{_resnet(match.group(5))}"
    sampler = "upsamplers" if up else "downsamplers"
    return f"{blocks}.{level}.{sampler}.0.{match.group(5)}"


def _levels(state: Mapping[str, torch.Tensor], prefix: str) -> list[tuple[int, int]]:
    """``[(out_channels, num_resnets)]`` per level of an LDM trunk (``prefix`` = ``decoder.up`` / ``encoder.down``)."""
    found: dict[int, dict[int, int]] = {}
    for key, value in state.items():
        match = re.match(rf"^{re.escape(prefix)}\.(\d+)\.block\.(\d+)\.conv2\.weight$", key)
        if match:
            found.setdefault(int(match.group(1)), {})[int(match.group(2))] = int(value.shape[0])
    return [(blocks[max(blocks)], len(blocks)) for _, blocks in sorted(found.items())]


def _need(state: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise AsukaError(f"{source}: no '{key}' (not an ASUKA decoder checkpoint in the LDM layout?)")
    return state[key]


def decoder_config_from_weights(state: Mapping[str, torch.Tensor], source: str, expect: Mapping[str, Any]) -> dict:
    """:class:`AsukaDecoder` arguments read from the weights, checked against ``expect`` (a ``model.decoder``
    block). Refuses what ``AsukaDecoder`` cannot express: ``gate_conv: true`` and attention at the up levels."""
    up, down = _levels(state, "decoder.up"), _levels(state, "encoder.down")
    if not up or not down:
        raise AsukaError(f"{source}: needs decoder.up.* and encoder.down.* weights (LDM layout)")
    latent = int(_need(state, "decoder.conv_in.weight", source).shape[1])
    if latent not in LATENT_KINDS:
        raise AsukaError(f"{source}: latent width {latent}; the released decoders take 16 (FLUX) or 4 (SD)")
    if any(re.match(r"^decoder\.up\.\d+\.attn\.", k) for k in state):
        raise AsukaError(f"{source}: attention at the decoder's up levels (attn_resolutions not empty) is not "
                         f"supported by AsukaDecoder (the released config has attn_resolutions: [])")
    first = _need(state, "decoder.encoder.layers.0.weight", source)
    if first.shape[0] == 2 * up[0][0]:
        raise AsukaError(f"{source}: the condition encoder was trained with gate_conv: true (doubled widths), which "
                         f"AsukaDecoder does not implement (the released config has gate_conv: false)")
    if first.shape[1] not in (3, 4):
        raise AsukaError(f"{source}: condition encoder input of {first.shape[1]} channels (expected 3 or 4)")
    if len({n for _, n in up}) != 1 or len({n for _, n in down}) != 1:
        raise AsukaError(f"{source}: levels with different numbers of res blocks are not supported")
    scaling, quant = LATENT_KINDS[latent]
    kwargs = dict(
        in_channels=int(_need(state, "encoder.conv_in.weight", source).shape[1]),
        out_channels=int(_need(state, "decoder.conv_out.weight", source).shape[0]),
        down_block_types=("DownEncoderBlock2D",) * len(down), down_block_out_channels=tuple(c for c, _ in down),
        layers_per_down_block=down[0][1], up_block_types=("UpDecoderBlock2D",) * len(up),
        up_block_out_channels=tuple(c for c, _ in up), layers_per_up_block=up[0][1] - 1, act_fn="silu",
        latent_channels=latent, norm_num_groups=32, sample_size=256, scaling_factor=scaling,
        condition_mask_channel=first.shape[1] == 4, fusion_mask="area_any", use_quant_conv=quant,
        use_post_quant_conv=quant,
    )
    for key in ("up_block_out_channels", "layers_per_up_block", "down_block_out_channels", "layers_per_down_block",
                "norm_num_groups", "condition_mask_channel", "fusion_mask"):
        want = expect.get(key) if hasattr(expect, "get") else None
        if want is None:
            continue
        want = tuple(int(c) for c in want) if isinstance(kwargs[key], tuple) else type(kwargs[key])(want)
        if want != kwargs[key]:
            raise ConfigError(f"model.decoder.{key}", f"is {want} but {source} has {kwargs[key]}")
    return kwargs


def map_ldm_decoder_keys(state: Mapping[str, torch.Tensor], up_levels: int, down_levels: int,
                         quant: bool) -> tuple[dict, dict, list, list]:
    """``(converted, renamed {old: new}, dropped, unexpected)`` for a LDM-layout ASUKA decoder state dict."""
    out: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    dropped: list[str] = []
    unexpected: list[str] = []
    for key, value in state.items():
        part, _, rest = key.partition(".")
        new = None
        if part == "decoder" and rest.startswith("up_layers."):
            dropped.append(key)
            continue
        if part == "decoder" and rest.startswith("encoder.layers."):
            new = "decoder.condition_" + rest
        elif part in ("encoder", "decoder"):
            mapped = _map_trunk(rest, up_levels if part == "decoder" else down_levels, up=part == "decoder")
            new = f"{part}.{mapped}" if mapped else None
        elif part in ("quant_conv", "post_quant_conv") and quant:
            new = key
        else:  # training-only entries (losses, EMA, ...), or quant convs an AE without them never used
            dropped.append(key)
            continue
        if new is None:
            unexpected.append(key)
            continue
        if ".attentions.0.to_" in new and value.ndim == 4:
            value = value[:, :, 0, 0]  # 1x1 conv -> linear
        out[new] = value
        renamed[key] = new
    return out, renamed, dropped, unexpected


def unwrap_lightning(state: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint's ``state_dict`` (or of a plain state dict)."""
    inner = state.get("state_dict", state) if isinstance(state, Mapping) else None
    if not isinstance(inner, Mapping):
        raise AsukaError(f"{source}: expected a Lightning checkpoint with a 'state_dict'")
    return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}


def convert_ldm_decoder(
    state: Mapping[str, Any], source: str, expect: Mapping[str, Any]
) -> tuple[AsukaDecoder, dict[str, Any]]:
    """Build the :class:`AsukaDecoder` the checkpoint describes and load it strictly; returns it and its report
    ``{config, renamed, dropped, shapes}``. Missing or unexpected keys are errors naming them."""
    tensors = unwrap_lightning(state, source)
    kwargs = decoder_config_from_weights(tensors, source, expect)
    converted, renamed, dropped, unexpected = map_ldm_decoder_keys(
        tensors, len(kwargs["up_block_out_channels"]), len(kwargs["down_block_out_channels"]),
        kwargs["use_quant_conv"])
    if unexpected:
        raise AsukaError(f"{source}: unexpected keys for the ASUKA decoder: {', '.join(sorted(unexpected))}")
    model = build_and_load(lambda: AsukaDecoder(**kwargs), converted, source, "ASUKA decoder")
    report = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}, "renamed": renamed,
              "dropped": sorted(dropped), "shapes": {k: list(v.shape) for k, v in converted.items()}}
    return model.eval(), report
