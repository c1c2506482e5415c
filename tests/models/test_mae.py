"""MaskedAutoencoderViT (tiny config): prior contract, masking rules, save/load, the MAE-FAR training loss."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.mae_blocks import sincos_pos_embed_2d


@pytest.fixture(scope="module")
def tiny_kwargs() -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "tiny.yaml")
    return OmegaConf.to_container(cfg.mae, resolve=True)


@pytest.fixture
def model(tiny_kwargs) -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    m = MaskedAutoencoderViT(**tiny_kwargs).eval()
    with torch.no_grad():
        m.alpha.fill_(0.5)  # make the partial-patch blend active (released init is 1 = off)
    return m


def _image(b: int = 2, s: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, s, s, generator=g) * 2 - 1


def _mask(b: int = 2, s: int = 32) -> torch.Tensor:
    """Patch grid 4x4 of 8 px. Patch (0,0) fully masked, patch (1,1) partially masked (one pixel), rest known."""
    m = torch.zeros(b, 1, s, s)
    m[:, :, 0:8, 0:8] = 1
    m[:, :, 9, 10] = 1
    return m


def test_prior_shape_and_tokens(model, tiny_kwargs):
    prior = model.prior(_image(), _mask())
    grid = tiny_kwargs["img_size"] // tiny_kwargs["patch_size"]
    assert prior.shape == (2, grid * grid, tiny_kwargs["decoder_embed_dim"])
    assert torch.isfinite(prior).all()


def test_prior_resizes_other_sizes(model, tiny_kwargs):
    image = _image(s=64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 0:16, 0:16] = 1
    assert model.prior(image, mask).shape == (2, 16, tiny_kwargs["decoder_embed_dim"])


def test_patch_mask_any_pixel_rule(model):
    m = torch.zeros(1, 1, 32, 32)
    m[0, 0, 0:8, 0:8] = 1        # patch 0 fully
    m[0, 0, 31, 31] = 1          # patch 15, one corner pixel
    m[0, 0, 8, 23] = 1           # row 1, col 2 -> patch 6, one pixel
    expected = torch.zeros(1, 16)
    expected[0, [0, 6, 15]] = 1
    assert torch.equal(model.patch_mask(m), expected)


def test_encoder_ignores_masked_pixels(model):
    image, mask = _image(), _mask()
    tm = model.patch_mask(mask)[0].bool()
    changed = image.clone()
    changed[mask.expand_as(image) > 0] = torch.rand(int((mask.expand_as(image) > 0).sum())) * 2 - 1
    with torch.no_grad():
        a, b = model.encode(image, mask), model.encode(changed, mask)
        assert torch.allclose(a[:, ~tm], b[:, ~tm], atol=1e-6)
        # sanity: a known pixel does change the encoder output
        known = image.clone()
        known[:, :, 20, 20] += 0.5
        assert not torch.allclose(model.encode(known, mask)[:, ~tm], a[:, ~tm], atol=1e-4)


def test_attention_key_mask_hides_masked_tokens(model):
    """Even if a masked patch carried content, unmasked tokens must not see it (logits to masked keys = -inf)."""
    mask = _mask()
    tm = model.patch_mask(mask)
    x = model.normalize(_image())
    y = x.clone()
    y[:, :, 0:8, 0:8] = torch.randn(2, 3, 8, 8) * 3  # fully masked patch 0 gets other content
    with torch.no_grad():
        a, b = model._encoder(x, tm), model._encoder(y, tm)
        keep = ~tm[0].bool()
        assert torch.allclose(a[:, keep], b[:, keep], atol=1e-5)
        assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-3)  # the masked token itself (residual path) differs
        # without the key mask the content leaks into the other tokens
        assert not torch.allclose(model._encoder(x, None)[:, keep], model._encoder(y, None)[:, keep], atol=1e-4)


def test_prior_independent_of_masked_pixels(model):
    image, mask = _image(), _mask()
    changed = image.clone()
    changed[:, :, 0:8, 0:8] = torch.rand(2, 3, 8, 8) * 2 - 1  # fully masked patch
    changed[:, :, 9, 10] = 0.123                              # hole pixel of the partial patch
    with torch.no_grad():
        assert torch.allclose(model.prior(image, mask), model.prior(changed, mask), atol=1e-6)


def test_partial_patch_blend_uses_alpha(model):
    image, mask = _image(), _mask()
    with torch.no_grad():
        a = model.prior(image, mask)
        model.alpha.fill_(1.0)  # blend off: partial patch 5 no longer sees decoder_patch_embed
        b = model.prior(image, mask)
        model.alpha.fill_(3.0)  # clamped to 1
        c = model.prior(image, mask)
    assert not torch.allclose(a, b)
    assert torch.equal(b, c)


def test_all_masked_prior_is_the_null_prior(model):
    """A fully masked image has no context: its prior is the decoder run on mask tokens alone, so it is finite and
    the same for any image (this is the null prior of CFG and of latent augmentation)."""
    mask = torch.ones(2, 1, 32, 32)
    with torch.no_grad():
        a = model.prior(_image(), mask)
        b = model.prior(torch.rand(2, 3, 32, 32) * 2 - 1, mask)
        tokens = model.mask_token.expand(2, model.patch_mask(mask).shape[1], -1) + model.decoder_pos_embed
        for blk in model.decoder_blocks[: model.config.prior_layer]:
            tokens = blk(tokens)
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, tokens, atol=1e-5)


def test_nan_is_reported_not_replaced(model):
    with torch.no_grad():
        model.decoder_blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="MAE prior contains NaN"):
        model.prior(_image(), _mask())


def test_reconstruct_keeps_known_pixels(model):
    image, mask = _image(), _mask()
    with torch.no_grad():
        out = model.reconstruct(image, mask)
    assert out.shape == image.shape
    known = mask.expand_as(image) == 0
    assert torch.allclose(out[known], image[known], atol=1e-6)
    assert out.min() >= -1 and out.max() <= 1


def test_sincos_convention():
    pe = sincos_pos_embed_2d(8, 3)  # quarter = 2: [sin col, sin col, cos col, cos col, sin row, ..., cos row]
    assert pe.shape == (9, 8)
    token = 1 * 3 + 2  # row 1, column 2
    assert torch.allclose(pe[token, 0], torch.sin(torch.tensor(2.0)))
    assert torch.allclose(pe[token, 4], torch.sin(torch.tensor(1.0)))
    assert torch.allclose(pe[token, 3], torch.cos(torch.tensor(2.0 / 100.0)))


def test_save_load_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "mae")
    loaded = MaskedAutoencoderViT.from_pretrained(tmp_path / "mae").eval()
    image, mask = _image(), _mask()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights: exact
    with torch.no_grad():  # outputs (|x| < 5): float noise only, another CPU or memory layout may pick other kernels
        torch.testing.assert_close(loaded.prior(image, mask), model.prior(image, mask), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.reconstruct(image, mask), model.reconstruct(image, mask), rtol=1e-5,
                                   atol=1e-5)
    assert not loaded.pos_embed.requires_grad and "pos_embed" not in dict(loaded.named_parameters())


def test_token_drop_always_removes_masked_patches(model):
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        tm = (torch.rand(4, 16, generator=g) < 0.5).float()
        tm[tm.sum(1) > 12] = 0  # fewer than 75% masked patches
        ids_keep, ids_restore, removed = model.sample_token_drop(tm, 0.25, g)
        assert ids_keep.shape == (4, 4)
        assert (tm.gather(1, ids_keep) == 0).all(), "a masked patch was kept"
        assert torch.equal(removed.sum(1), torch.full((4,), 12.0))
        assert torch.equal(removed.gather(1, ids_keep), torch.zeros(4, 4))


def test_token_drop_is_seeded(model):
    tm = torch.zeros(2, 16)
    a = model.sample_token_drop(tm, 0.25, torch.Generator().manual_seed(3))
    b = model.sample_token_drop(tm, 0.25, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_loss_region(model):
    """The loss equals an independent masked MSE over the stated region, and ignores targets outside it."""
    image, mask = _image(), _mask()
    loss, pred_image = model.training_loss(image, mask, generator=torch.Generator().manual_seed(1))
    _, _, removed = model.sample_token_drop(model.patch_mask(mask), 0.25, torch.Generator().manual_seed(1))

    # independent region: hole pixels of removed patches + all pixels of non-hole removed patches
    region = torch.zeros(2, 1, 32, 32)
    hole_patch = model.patch_mask(mask)
    for b in range(2):
        for t in range(16):
            if removed[b, t]:
                r, c = divmod(t, 4)
                sl = (b, 0, slice(r * 8, r * 8 + 8), slice(c * 8, c * 8 + 8))
                region[sl] = mask[sl] if hole_patch[b, t] else 1.0
    assert torch.equal(region, model.loss_region(mask, hole_patch, removed))
    pred_norm = model.normalize(pred_image.detach())
    target = model.normalize(image)
    r3 = region.expand(-1, 3, -1, -1)
    expected = ((pred_norm - target) ** 2 * r3).sum() / r3.sum()
    assert torch.allclose(loss.detach(), expected, rtol=1e-4)



def test_training_loss_gradient_only_inside_region(model):
    """d loss / d prediction is zero at every pixel outside the loss region, nonzero inside."""
    image, mask = _image(), _mask()
    captured = {}

    def hook(_mod, _inp, out):
        out.retain_grad()
        captured["pred"] = out

    handle = model.decoder_pred.register_forward_hook(hook)
    loss, _ = model.training_loss(image, mask, generator=torch.Generator().manual_seed(5))
    handle.remove()
    loss.backward()
    _, _, removed = model.sample_token_drop(model.patch_mask(mask), 0.25, torch.Generator().manual_seed(5))
    region = model.loss_region(mask, model.patch_mask(mask), removed)
    grad = model.unpatchify(captured["pred"].grad)
    outside = region.expand_as(grad) == 0
    assert grad[outside].abs().max() == 0
    assert (grad[~outside] != 0).float().mean() > 0.99
    # the partially masked patch (1,1) contributes only its hole pixel when dropped
    for b in range(2):
        if removed[b, 5]:
            assert region[b, 0, 8:16, 8:16].sum() == 1 and region[b, 0, 9, 10] == 1
        else:
            assert region[b, 0, 8:16, 8:16].sum() == 0


def test_training_forward_backward(model):
    """``forward`` is the training loss (what DDP wraps); gradients reach encoder and decoder."""
    image, mask = _image(), _mask()
    model.train()
    loss, pred = model(image, mask, generator=torch.Generator().manual_seed(2))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.decoder_pred.weight.grad is not None and model.blocks[0].attn.qkv.weight.grad is not None
    assert pred.shape == image.shape


def test_training_loss_keep_ratio_validated(model):
    with pytest.raises(ValueError):
        model.training_loss(_image(), _mask(), keep_ratio=1.0)


@pytest.mark.slow
def test_tiny_mae_overfits_one_image(tiny_kwargs):
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**tiny_kwargs).train()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    image = torch.stack([xx, yy, (xx * yy)], 0)[None] * 0.8
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 4:14, 6:20] = 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    losses = []
    for step in range(200):  # ~2 s on an idle CPU core
        loss, _ = model.training_loss(image, mask, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
        losses.append(loss.item())
    final = sum(losses[-20:]) / 20
    assert final < first / 10, (first, final)
