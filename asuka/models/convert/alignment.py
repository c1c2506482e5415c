"""The released alignment heads (``asuka_alignment_{t5,clip}.pt``) -> :class:`AlignmentModule` (``flux_single``).

Official layout (``test_asuka_flux.py get_single_stram_blk_asuka``): a plain state dict of ``Sequential(Linear(512, D),
4 x SingleStreamBlockAsuka(D, D / 64 heads), LayerNorm(D))``: ``0.*`` the input Linear, ``{1..4}.linear1.*``,
``{1..4}.linear2.*``, ``{1..4}.norm.{query,key}_norm.scale``, ``{1..4}.modulation.lin.*`` (built, never called:
dropped), ``5.*`` the final LayerNorm.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from asuka.models.alignment import AlignmentModule
from asuka.models.convert.strict import build_and_load
from asuka.utils.errors import AsukaError

_BLOCK_KEY = re.compile(
    r"^(\d+)\.(linear1|linear2|norm\.query_norm|norm\.key_norm|modulation\.lin)\.(weight|bias|scale)$")


def map_official_alignment_keys(state: Mapping[str, torch.Tensor], depth: int) -> tuple[dict, dict, list]:
    """``(converted, renamed {old: new}, dropped)`` for a ``depth``-block official head; unknown keys raise."""
    out: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        index, _, rest = key.partition(".")
        match = _BLOCK_KEY.match(key)
        if index == "0" and rest in ("weight", "bias"):
            new = f"proj.{rest}"
        elif index == str(depth + 1) and rest in ("weight", "bias"):
            new = f"norm.{rest}"
        elif match and 1 <= int(match.group(1)) <= depth:
            part = match.group(2)
            if part == "modulation.lin":
                dropped.append(key)
                continue
            new = f"blocks.{int(match.group(1)) - 1}.{part.replace('norm.', '')}.{match.group(3)}"
        else:
            unknown.append(key)
            continue
        out[new] = value
        renamed[key] = new
    if unknown:
        raise AsukaError(f"unexpected keys for an official alignment head: {', '.join(sorted(unknown))}")
    return out, renamed, dropped


def _depth(state: Mapping[str, torch.Tensor]) -> int:
    blocks = {int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit() and ".linear1." in k}
    return len(blocks)


def convert_official_alignment(
    state: Mapping[str, Any], source: str, expect: Mapping[str, Any]
) -> tuple[AlignmentModule, dict[str, Any]]:
    """Build the ``flux_single`` :class:`AlignmentModule` that ``expect`` (a ``model.alignment`` block: in_dim,
    out_dim, depth, num_heads, mlp_ratio) describes and load the released ``state`` into it strictly.

    Returns the module and its report ``{renamed, dropped, shapes}``. A file of other widths or depth is refused in
    one line naming ``source``; missing or unexpected keys are errors naming them.
    """
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state) or "0.weight" not in tensors:
        raise AsukaError(f"{source}: not an official alignment head (expected a plain state dict with '0.weight')")
    kwargs = {k: expect[k] for k in ("in_dim", "out_dim", "depth", "num_heads", "mlp_ratio")}
    width, in_dim, depth = tensors["0.weight"].shape[0], tensors["0.weight"].shape[1], _depth(tensors)
    found, wanted = (in_dim, width, depth), (int(kwargs["in_dim"]), int(kwargs["out_dim"]), int(kwargs["depth"]))
    if found != wanted:
        raise AsukaError(f"{source}: a head of in_dim {in_dim}, width {width}, {depth} blocks; expected "
                         f"{wanted[0]}, {wanted[1]}, {wanted[2]} (wrong file for this head?)")
    try:
        converted, renamed, dropped = map_official_alignment_keys(tensors, depth)
    except AsukaError as exc:
        raise AsukaError(f"{source}: {exc}") from None
    model = build_and_load(lambda: AlignmentModule(**kwargs, block="flux_single"), converted, source,
                           "flux_single head")
    shapes = {k: list(v.shape) for k, v in converted.items()}
    return model.eval(), {"renamed": renamed, "dropped": sorted(dropped), "shapes": shapes}
