"""Assign: the IP-Adapter-Plus image branch of LAR-Gen and its conversion to and from ``h94/IP-Adapter`` files.

CLIP ViT-H/14 penultimate hidden states ``[B, 257, 1280]`` -> resampler (diffusers' ``IPAdapterPlusImageProjection``:
16 learned queries, depth 4, 64-d heads) -> 16 tokens; every cross-attention layer of the UNet gets its own
``to_k_ip``/``to_v_ip`` (applied by :class:`asuka.models.largen.attention.LarGenAttnProcessor`).

``h94/IP-Adapter``'s ``models/ip-adapter-plus_sd15.bin`` holds ``{"image_proj": resampler, "ip_adapter":
{"<i>.to_k_ip.weight", "<i>.to_v_ip.weight"}}`` where ``i`` is the layer's position among the UNet's attention
processors (1, 3, 5, ... for SD-1.5); the ``.safetensors`` variant flattens it to ``image_proj.<key>`` /
``ip_adapter.<key>``. The resampler's own key names are those of IP-Adapter's ``Resampler``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from torch import nn

from asuka.models.largen.attention import cross_attention_layers
from asuka.utils.errors import AsukaError
from asuka.utils.safe_load import load_state_dict

# Resampler layer i: IP-Adapter's ``layers.i.<a>`` <-> diffusers' ``layers.i.<b>`` (to_kv is split into to_k/to_v).
_RESAMPLER_KEYS = (
    ("0.norm1", "ln0"),
    ("0.norm2", "ln1"),
    ("0.to_q", "attn.to_q"),
    ("0.to_out", "attn.to_out.0"),
    ("1.0", "ff.0"),
    ("1.1", "ff.1.net.0.proj"),
    ("1.3", "ff.1.net.2"),
)
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


class AssignAdapter(ModelMixin, ConfigMixin):
    """Resampler + one ``to_k_ip``/``to_v_ip`` pair per UNet cross-attention layer (listed in ``layer_names``,
    with ``layer_indices``: their positions among the UNet's attention processors, the ``h94`` key numbers)."""

    @register_to_config
    def __init__(
        self,
        layer_names: list[str],
        layer_indices: list[int],
        layer_hidden_sizes: list[int],
        cross_attention_dim: int = 768,
        image_embed_dim: int = 1280,
        resampler_dim: int = 768,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        num_tokens: int = 16,
        ffn_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if not len(layer_names) == len(layer_indices) == len(layer_hidden_sizes):
            raise ValueError("layer_names, layer_indices and layer_hidden_sizes must have the same length")
        self.image_proj = IPAdapterPlusImageProjection(
            embed_dims=image_embed_dim,
            output_dims=cross_attention_dim,
            hidden_dims=resampler_dim,
            depth=depth,
            dim_head=dim_head,
            heads=heads,
            num_queries=num_tokens,
            ffn_ratio=ffn_ratio,
        )
        self.to_k_ip = nn.ModuleList(nn.Linear(cross_attention_dim, h, bias=False) for h in layer_hidden_sizes)
        self.to_v_ip = nn.ModuleList(nn.Linear(cross_attention_dim, h, bias=False) for h in layer_hidden_sizes)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, **resampler: int | float) -> "AssignAdapter":
        """An adapter for ``unet``; ``to_k_ip``/``to_v_ip`` start as copies of each layer's ``to_k``/``to_v``
        (IP-Adapter's training initialisation), the resampler is random."""
        layers = cross_attention_layers(unet)
        attns = [unet.get_submodule(name) for name, _ in layers]
        adapter = cls(
            layer_names=[name for name, _ in layers],
            layer_indices=[index for _, index in layers],
            layer_hidden_sizes=[a.to_k.out_features for a in attns],
            cross_attention_dim=int(unet.config.cross_attention_dim),
            **resampler,
        )
        with torch.no_grad():
            for attn, k_ip, v_ip in zip(attns, adapter.to_k_ip, adapter.to_v_ip):
                k_ip.weight.copy_(attn.to_k.weight)
                v_ip.weight.copy_(attn.to_v.weight)
        return adapter.to(device=unet.device)

    def layers(self) -> dict[str, tuple[nn.Linear, nn.Linear]]:
        """Layer name -> ``(to_k_ip, to_v_ip)``, for :func:`asuka.models.largen.attention.install_processors`."""
        return {name: (k, v) for name, k, v in zip(self.config.layer_names, self.to_k_ip, self.to_v_ip)}

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """CLIP penultimate hidden states ``[B, N, image_embed_dim]`` -> image tokens ``[B, num_tokens, D]``."""
        return self.image_proj(image_embeds)

    # --------------------------------------------------------------------------------- h94/IP-Adapter layout
    def to_ip_adapter_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """This adapter in ``h94/IP-Adapter``'s ``ip-adapter-plus`` layout (``{"image_proj", "ip_adapter"}``)."""
        image_proj: dict[str, torch.Tensor] = {}
        sd = self.image_proj.state_dict()
        for key, value in sd.items():
            match = _LAYER.match(key)
            if match is None:
                image_proj[key] = value
                continue
            layer, name, kind = match.groups()
            if name == "attn.to_k":
                image_proj[f"layers.{layer}.0.to_kv.{kind}"] = torch.cat([value, sd[f"layers.{layer}.attn.to_v.{kind}"]])
            elif name != "attn.to_v":
                ours = dict((b, a) for a, b in _RESAMPLER_KEYS)[name]
                image_proj[f"layers.{layer}.{ours}.{kind}"] = value
        ip_adapter = {}
        for index, k, v in zip(self.config.layer_indices, self.to_k_ip, self.to_v_ip):
            ip_adapter[f"{index}.to_k_ip.weight"] = k.weight
            ip_adapter[f"{index}.to_v_ip.weight"] = v.weight
        detach = lambda d: {key: t.detach().clone().contiguous() for key, t in d.items()}  # noqa: E731
        return {"image_proj": detach(image_proj), "ip_adapter": detach(ip_adapter)}

    def load_ip_adapter_state_dict(self, state: dict[str, dict[str, torch.Tensor]], source: str = "state dict") -> None:
        """Load an ``h94/IP-Adapter`` ``ip-adapter-plus`` state dict (every key must match; AsukaError if not)."""
        ours: dict[str, torch.Tensor] = {}
        theirs = dict((a, b) for a, b in _RESAMPLER_KEYS)
        for key, value in state["image_proj"].items():
            match = _LAYER.match(key)
            if match is None:
                ours[f"image_proj.{key}"] = value
                continue
            layer, name, kind = match.groups()
            if name == "0.to_kv":
                k, v = value.chunk(2, dim=0)
                ours[f"image_proj.layers.{layer}.attn.to_k.{kind}"] = k
                ours[f"image_proj.layers.{layer}.attn.to_v.{kind}"] = v
            elif name in theirs:
                ours[f"image_proj.layers.{layer}.{theirs[name]}.{kind}"] = value
            else:
                ours[f"image_proj.{key}"] = value  # unknown: reported as unexpected below
        position = {index: i for i, index in enumerate(self.config.layer_indices)}
        for key, value in state["ip_adapter"].items():
            index, _, rest = key.partition(".")
            if not index.isdigit() or int(index) not in position:
                raise AsukaError(f"{source}: ip_adapter key '{key}' names no cross-attention layer of this UNet "
                                 f"(expected indices {list(self.config.layer_indices)[:4]}...)")
            ours[f"{rest.split('.')[0]}.{position[int(index)]}.weight"] = value
        try:
            missing, unexpected = self.load_state_dict(ours, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise AsukaError(f"{source}: IP-Adapter weights do not fit this UNet ({str(exc).splitlines()[-1].strip()})") from None
        if missing or unexpected:
            raise AsukaError(f"{source}: IP-Adapter weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")

    @classmethod
    def from_ip_adapter_file(
        cls, path: str | os.PathLike, unet: UNet2DConditionModel, dim_head: int = 64
    ) -> "AssignAdapter":
        """Read ``ip-adapter-plus_sd15.bin`` / ``.safetensors`` (``h94/IP-Adapter``) for ``unet``; the resampler's
        sizes come from the file (as diffusers infers them), its head width is ``dim_head``."""
        return cls.from_ip_adapter_state(read_ip_adapter_file(path), unet, dim_head, str(path))

    @classmethod
    def from_ip_adapter_state(
        cls, state: dict[str, dict[str, torch.Tensor]], unet: UNet2DConditionModel, dim_head: int = 64,
        source: str = "state dict",
    ) -> "AssignAdapter":
        """An adapter for ``unet`` from an ``h94`` ``{"image_proj", "ip_adapter"}`` dict, sized by its weights."""
        proj = state["image_proj"]
        try:
            depth = 1 + max(int(m.group(1)) for m in map(_LAYER.match, proj) if m)
            adapter = cls.from_unet(
                unet,
                image_embed_dim=proj["proj_in.weight"].shape[1],
                resampler_dim=proj["latents"].shape[2],
                depth=depth,
                dim_head=dim_head,
                heads=proj["layers.0.0.to_q.weight"].shape[0] // dim_head,
                num_tokens=proj["latents"].shape[1],
                ffn_ratio=proj["layers.0.1.1.weight"].shape[0] / proj["latents"].shape[2],
            )
        except (KeyError, ValueError) as exc:
            raise AsukaError(f"{source}: not an ip-adapter-plus file (missing {exc})") from None
        if adapter.config.cross_attention_dim != proj["proj_out.weight"].shape[0]:
            raise AsukaError(f"{source}: resampler output width {proj['proj_out.weight'].shape[0]} differs from the "
                             f"UNet's cross-attention width {adapter.config.cross_attention_dim}")
        adapter.load_ip_adapter_state_dict(state, source)
        return adapter


def read_ip_adapter_file(path: str | os.PathLike) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": ..., "ip_adapter": ...}`` from a ``.bin`` (nested) or ``.safetensors`` (flat) file."""
    raw = load_state_dict(Path(os.path.expanduser(str(path))))
    if "image_proj" in raw and isinstance(raw["image_proj"], dict):
        nested = raw
    else:
        nested = {"image_proj": {}, "ip_adapter": {}}
        for key, value in raw.items():
            part, _, rest = key.partition(".")
            if part not in nested:
                raise AsukaError(f"{path}: unexpected key '{key}' (an IP-Adapter file has image_proj.* and ip_adapter.*)")
            nested[part][rest] = value
    if not nested.get("image_proj") or not nested.get("ip_adapter"):
        raise AsukaError(f"{path}: not an IP-Adapter file (no image_proj/ip_adapter weights)")
    return nested


def save_ip_adapter_file(adapter: AssignAdapter, path: str | os.PathLike) -> Path:
    """Write ``adapter`` in the ``h94`` layout: flat ``.safetensors`` (``image_proj.*``, ``ip_adapter.*``) or, for
    ``.bin``, the nested dict (readable by diffusers' ``load_ip_adapter`` and IP-Adapter's own code)."""
    path = Path(path)
    state = adapter.to_ip_adapter_state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{part}.{k}": v for part, d in state.items() for k, v in d.items()}, str(path))
    else:
        torch.save(state, path)
    return path
