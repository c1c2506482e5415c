"""Attention processors of LAR-Gen: decoupled cross-attention (Assign) and reference self-attention (Refine).

One processor class serves every attention layer of the main UNet and of the RefineNet, so every layer accepts the
same ``cross_attention_kwargs`` (``ip_tokens``, ``ip_scale``, ``reference_bank``, ``reference_keep``). Processors are plain objects,
not ``nn.Module``s: the ``to_k_ip``/``to_v_ip`` layers they use belong to the :class:`AssignAdapter`, so the UNet's
own ``state_dict``/``save_pretrained`` stay exactly diffusers' vanilla UNet.

The reference bank is a dict keyed by layer name (not a list filled in call order): a gradient-checkpointed block
that replays its forward reads and writes the same entries again.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from asuka.utils.errors import ConfigError

READ, WRITE = "read", "write"


class ImageBranch(Protocol):
    """What :func:`install_processors` needs of the Assign adapter (``asuka.models.largen.assign.AssignAdapter``),
    named here so the processors do not import the adapter that imports them."""

    def layers(self) -> dict[str, tuple[nn.Linear, nn.Linear]]: ...


def _heads(x: torch.Tensor, attn: Attention) -> torch.Tensor:
    batch = x.shape[0]
    return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: Attention, mask: torch.Tensor | None = None):
    out = F.scaled_dot_product_attention(_heads(q, attn), _heads(k, attn), _heads(v, attn), attn_mask=mask)
    return out.transpose(1, 2).reshape(q.shape[0], -1, out.shape[1] * out.shape[-1]).to(q.dtype)


class LarGenAttnProcessor:
    """``Attn(q, K, V) + ip_scale * Attn(q, K_ip, V_ip)`` (IP-Adapter's decoupled cross-attention) for a layer with
    an image branch; for a self-attention layer with ``reference="write"`` (RefineNet) it stores its normed hidden
    states in ``reference_bank[name]``, with ``reference="read"`` (main UNet) it attends over
    ``cat[own, reference_bank[name]]`` through its own ``to_k``/``to_v``. ``reference_keep [B]`` (1 = use the
    reference) swaps in the layer's own features for the others: attention over duplicated keys is unchanged."""

    def __init__(
        self,
        name: str,
        to_k_ip: nn.Linear | None = None,
        to_v_ip: nn.Linear | None = None,
        reference: str | None = None,
    ) -> None:
        if reference not in (None, READ, WRITE):
            raise ValueError(f"reference must be None, {READ!r} or {WRITE!r}, got {reference!r}")
        self.name, self.to_k_ip, self.to_v_ip, self.reference = name, to_k_ip, to_v_ip, reference

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ip_tokens: torch.Tensor | None = None,
        ip_scale: float = 1.0,
        reference_bank: dict[str, torch.Tensor] | None = None,
        reference_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError(f"{self.name}: LAR-Gen processors serve transformer-block attention only")
        residual = hidden_states
        batch, length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
            if self.reference == WRITE and reference_bank is not None:
                reference_bank[self.name] = hidden_states
            elif self.reference == READ and reference_bank and self.name in reference_bank:
                if attention_mask is not None:
                    raise NotImplementedError(f"{self.name}: reference keys with an attention mask")
                reference = reference_bank[self.name].to(hidden_states.dtype)
                if reference_keep is not None:  # a sample without subject attends to its own features twice = none
                    reference = torch.where(reference_keep.view(-1, 1, 1) > 0.5, reference, hidden_states)
                context = torch.cat([hidden_states, reference], dim=1)
        else:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        out = _attend(query, attn.to_k(context), attn.to_v(context), attn, attention_mask)
        if self.to_k_ip is not None and ip_tokens is not None and float(ip_scale) != 0.0:
            ip_tokens = ip_tokens.to(query.dtype)
            out = out + ip_scale * _attend(query, self.to_k_ip(ip_tokens), self.to_v_ip(ip_tokens), attn)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_layers(unet: UNet2DConditionModel) -> list[tuple[str, int]]:
    """``(layer name, position among all attention processors)`` of every cross-attention layer, in diffusers'
    ``attn_processors`` order (the order ``h94/IP-Adapter`` numbers its ``ip_adapter`` keys by)."""
    names = [name.removesuffix(".processor") for name in unet.attn_processors]
    return [(name, i) for i, name in enumerate(names) if name.endswith("attn2")]


def is_reference_layer(name: str) -> bool:
    """Refine injects into the self-attention of the UNet's decoder (up) blocks only."""
    return name.startswith("up_blocks.") and name.endswith("attn1")


def install_processors(
    unet: UNet2DConditionModel, adapter: ImageBranch | None = None, reference: str | None = None
) -> None:
    """Give every attention layer of ``unet`` a :class:`LarGenAttnProcessor`: cross-attention layers get the
    adapter's ``to_k_ip``/``to_v_ip`` (when ``adapter``), up-block self-attention layers the ``reference`` role."""
    ip = adapter.layers() if adapter is not None else {}
    expected = {name for name, _ in cross_attention_layers(unet)}
    if adapter is not None and set(ip) != expected:
        raise ConfigError("model.largen", f"the Assign adapter's layers {sorted(ip)[:2]}... do not match the UNet's "
                                          f"cross-attention layers {sorted(expected)[:2]}...")
    processors = {}
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        to_k_ip, to_v_ip = ip.get(name, (None, None))
        processors[key] = LarGenAttnProcessor(name, to_k_ip, to_v_ip, reference if is_reference_layer(name) else None)
    unet.set_attn_processor(processors)
