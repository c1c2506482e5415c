"""The alignment module: shapes, save/load round trip, trainability, and the condition helpers."""
from __future__ import annotations

import pytest
import torch

from asuka.models.alignment import AlignmentModule, encode_condition, null_condition, null_prior
from asuka.models.mae import MaskedAutoencoderViT
from asuka.utils.errors import ConfigError

TINY = dict(in_dim=32, out_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, block="vit")
TINY_MAE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                decoder_depth=4, decoder_num_heads=2, mlp_ratio=2.0, prior_layer=3)


def test_paper_shapes() -> None:
    model = AlignmentModule()  # paper defaults: 512 -> 768, 4 blocks, 12 heads
    assert (model.config.in_dim, model.config.out_dim, len(model.blocks)) == (512, 768, 4)
    with torch.no_grad():
        out = model(torch.randn(2, 256, 512))
    assert out.shape == (2, 256, 768)


def test_structure_linear_blocks_norm() -> None:
    model = AlignmentModule(**TINY)
    assert isinstance(model.proj, torch.nn.Linear) and model.proj.in_features == 32
    assert len(model.blocks) == 1 and isinstance(model.norm, torch.nn.LayerNorm)
    out = model(torch.randn(3, 16, 32))
    # the final LayerNorm (unit weight, zero bias at init) gives zero-mean, unit-variance tokens
    assert torch.allclose(out.mean(-1), torch.zeros(3, 16), atol=1e-5)


def test_bad_input_and_config() -> None:
    model = AlignmentModule(**TINY)
    with pytest.raises(ValueError, match="prior"):
        model(torch.randn(2, 16, 31))
    with pytest.raises(ConfigError, match="num_heads"):
        AlignmentModule(in_dim=8, out_dim=30, num_heads=4)


def test_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = AlignmentModule(**TINY).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AlignmentModule.from_pretrained(tmp_path).eval()
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config) == TINY
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights: exact
    x = torch.randn(2, 16, 32)
    with torch.no_grad():  # outputs (|x| < 5): float noise only, another CPU or memory layout may pick other kernels
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    model = AlignmentModule(**TINY)
    model(torch.randn(2, 16, 32)).pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_condition_helpers_and_the_null_condition() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(**TINY_MAE).eval()
    align = AlignmentModule(**TINY).eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 10:30, 10:30] = 1
    mask[1] = 1  # nothing visible: the null condition
    with torch.no_grad():
        cond = encode_condition(mae, align, image, mask)
        null = null_condition(mae, align, 2)
        prior = null_prior(mae, 2)
    assert cond.shape == null.shape == (2, 16, 32) and prior.shape == (2, 16, 32)
    assert torch.allclose(cond[1], null[1], atol=1e-5) and torch.allclose(null[0], null[1])
    assert torch.allclose(cond[0], align(mae.prior(image[:1], mask[:1]))[0], atol=1e-6)
    assert not torch.allclose(cond[0], null[0])


def test_alignment_trains_on_a_frozen_prior() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(**TINY_MAE).eval().requires_grad_(False)
    align = AlignmentModule(**TINY)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1
    encode_condition(mae, align, torch.zeros(1, 3, 32, 32), mask).pow(2).mean().backward()
    assert align.proj.weight.grad is not None and not any(p.grad is not None for p in mae.parameters())
