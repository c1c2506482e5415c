"""``AlignmentModule(block="flux_single")``: the official FLUX single-stream block, against the block's formula written
out here (LayerNorm, split, per-head RMS norm cast before the scale, softmax attention, tanh-GELU, residual)."""
from __future__ import annotations

import math

import pytest
import torch

from asuka.models.alignment import AlignmentModule, HeadRMSNorm
from asuka.utils.errors import ConfigError

TINY = dict(in_dim=16, out_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, block="flux_single")


def block_formula(p: dict[str, torch.Tensor], x: torch.Tensor, heads: int) -> torch.Tensor:
    """One official ``SingleStreamBlockAsuka`` from its weights (``linear1``, ``linear2``, ``query_scale``,
    ``key_scale``), computed in float64."""
    d = x.shape[-1]
    h = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
    y = h @ p["linear1.weight"].T + p["linear1.bias"]
    qkv, mlp = y[..., : 3 * d], y[..., 3 * d:]
    b, n, _ = x.shape
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, heads, d // heads).transpose(1, 2) for i in range(3))
    rms = lambda t, s: t / torch.sqrt((t ** 2).mean(-1, keepdim=True) + 1e-6) * s  # noqa: E731
    q, k = rms(q, p["query_scale"]), rms(k, p["key_scale"])
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
    attn = attn.transpose(1, 2).reshape(b, n, d)
    gelu = 0.5 * mlp * (1 + torch.tanh(math.sqrt(2 / math.pi) * (mlp + 0.044715 * mlp ** 3)))
    return x + torch.cat([attn, gelu], -1) @ p["linear2.weight"].T + p["linear2.bias"]


def head_formula(model: AlignmentModule, prior: torch.Tensor) -> torch.Tensor:
    """``LayerNorm_1e-5(blocks(Linear(prior)))`` in float64 from ``model``'s weights."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = prior.double() @ sd["proj.weight"].T + sd["proj.bias"]
    for i in range(model.config.depth):
        p = {name: sd[f"blocks.{i}.{name}"] for name in ("linear1.weight", "linear1.bias", "linear2.weight",
                                                          "linear2.bias")}
        p["query_scale"], p["key_scale"] = sd[f"blocks.{i}.query_norm.scale"], sd[f"blocks.{i}.key_norm.scale"]
        x = block_formula(p, x, model.config.num_heads)
    x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    return x * sd["norm.weight"] + sd["norm.bias"]


def _randomised(**overrides) -> AlignmentModule:
    torch.manual_seed(0)
    model = AlignmentModule(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # scales and the final norm away from their init, so a dropped term would show
        for name, p in model.named_parameters():
            if name.endswith("scale") or name == "norm.weight":
                p.uniform_(0.5, 1.5)
            elif name == "norm.bias":
                p.uniform_(-0.5, 0.5)
    return model


def test_flux_single_matches_the_formula_fp32() -> None:
    model = _randomised()
    prior = torch.randn(2, 10, 16)
    with torch.no_grad():
        out = model(prior)
    torch.testing.assert_close(out.double(), head_formula(model, prior), rtol=0, atol=2e-5)


def test_flux_single_in_bf16_stays_within_bf16_rounding_of_the_formula() -> None:
    model = _randomised()
    prior = torch.randn(2, 10, 16).bfloat16().float()
    with torch.no_grad():
        out = model.to(torch.bfloat16)(prior.bfloat16())
    assert out.dtype == torch.bfloat16
    err = (out.double() - head_formula(model.float(), prior)).abs().max().item()
    assert err < 0.1  # bf16 keeps ~3 significant digits; outputs are O(1) after the final LayerNorm


def test_head_rms_norm_casts_before_the_scale() -> None:
    """FLUX's order: normalise in fp32, cast to bf16, then multiply by the scale (a second bf16 rounding)."""
    torch.manual_seed(1)
    norm = HeadRMSNorm(8).to(torch.bfloat16)
    with torch.no_grad():
        norm.scale.uniform_(0.5, 1.5)
    x = torch.randn(4, 8).bfloat16()
    x32 = x.float()
    normed = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
    cast_first = normed.bfloat16() * norm.scale
    scale_first = (normed * norm.scale.float()).bfloat16()  # torch.nn.RMSNorm's order
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - cast_first.float()).abs().max() < (out.float() - scale_first.float()).abs().max()


def test_no_modulation_parameters_and_the_final_norm_eps() -> None:
    model = AlignmentModule(**TINY)
    names = [n for n, _ in model.named_parameters()]
    assert not any("modulation" in n for n in names)
    assert sorted(n for n in names if n.startswith("blocks.0.")) == [
        "blocks.0.key_norm.scale", "blocks.0.linear1.bias", "blocks.0.linear1.weight", "blocks.0.linear2.bias",
        "blocks.0.linear2.weight", "blocks.0.query_norm.scale"]
    assert model.blocks[0].linear1.weight.shape == (3 * 64 + 256, 64) and model.norm.eps == 1e-5
    assert AlignmentModule(**{**TINY, "block": "vit"}).norm.eps == 1e-6  # the default block keeps its own


def test_round_trip_keeps_the_block(tmp_path) -> None:
    model = _randomised()
    model.save_pretrained(tmp_path)
    loaded = AlignmentModule.from_pretrained(tmp_path).eval()
    assert loaded.config.block == "flux_single"
    prior = torch.randn(1, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(prior), model(prior), rtol=1e-5, atol=1e-5)


def test_unknown_block_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.alignment.block"):
        AlignmentModule(**{**TINY, "block": "double_stream"})
