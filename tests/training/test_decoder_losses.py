"""Stage-3 losses: GAN schedule, gradient isolation between generator and discriminator, adaptive weight, LPIPS."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from asuka.models.lpips import LPIPS_TRUNKS, build_lpips
from asuka.training.decoder_losses import DecoderLoss, NLayerDiscriminator, hinge_d_loss
from asuka.utils.errors import AsukaError


@pytest.fixture(scope="module")
def lpips_model():
    return build_lpips("vgg", "random")[0]


class TinyGenerator(nn.Module):
    """Stands in for the decoder: its conv_out is the 'last layer' of the adaptive weight."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv_out(torch.relu(self.body(x))))


def _setup(lpips_model, disc_start=5):
    torch.manual_seed(0)
    gen, disc = TinyGenerator(), NLayerDiscriminator(n_layers=3, base_channels=8)
    loss = DecoderLoss(lpips_model, lpips_weight=1.0, disc_weight=0.5, disc_start=disc_start)
    target = torch.rand(2, 3, 64, 64) * 2 - 1
    return gen, disc, loss, target


def test_discriminator_shape_and_round_trip(tmp_path):
    disc = NLayerDiscriminator(n_layers=3, base_channels=8)
    x = torch.zeros(2, 3, 64, 64)
    assert disc(x).shape == (2, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6 (70x70 PatchGAN)
    a, b = disc(x, x + 1)
    assert a.shape == b.shape == (2, 1, 6, 6)
    disc.save_pretrained(tmp_path / "d")
    loaded = NLayerDiscriminator.from_pretrained(tmp_path / "d")
    assert loaded.config.n_layers == 3
    disc.eval(), loaded.eval()
    ours, theirs = disc.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights: exact
    torch.testing.assert_close(loaded(x), disc(x), rtol=1e-5, atol=1e-5)  # outputs: float noise only


def test_gan_term_zero_before_start_and_active_after(lpips_model):
    gen, disc, loss, target = _setup(lpips_model, disc_start=5)
    recon = gen(target)
    losses, logs = loss(target, recon, 4, gen.conv_out.weight, disc)
    nll = (recon - target).abs().mean() + lpips_model(recon, target).mean()
    assert torch.allclose(losses["decoder"], nll)
    assert losses["discriminator"].item() == 0 and logs["g_loss"] == 0 and logs["gan_active"] == 0
    losses, logs = loss(target, gen(target), 5, gen.conv_out.weight, disc)
    assert logs["gan_active"] == 1 and logs["d_weight"] > 0 and logs["g_loss"] != 0
    assert losses["discriminator"].item() > 0
    assert not torch.allclose(losses["decoder"], nll)


def test_generator_loss_puts_no_gradient_into_the_discriminator(lpips_model):
    gen, disc, loss, target = _setup(lpips_model, disc_start=0)
    losses, _ = loss(target, gen(target), 10, gen.conv_out.weight, disc)
    losses["decoder"].backward()
    assert all(p.grad is None for p in disc.parameters())
    assert gen.conv_out.weight.grad is not None and gen.body.weight.grad.abs().sum() > 0
    # and the discriminator loss puts none into the generator
    gen.zero_grad(set_to_none=True)
    losses, _ = loss(target, gen(target), 10, gen.conv_out.weight, disc)
    losses["discriminator"].backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None for p in disc.parameters())


def test_sum_of_losses_gives_each_side_only_its_own_gradient(lpips_model):
    """The engine back-propagates the SUM: the decoder's gradient must equal that of its loss alone."""
    gen, disc, loss, target = _setup(lpips_model, disc_start=0)
    losses, _ = loss(target, gen(target), 1, gen.conv_out.weight, disc)
    sum(losses.values()).backward()
    together = [p.grad.clone() for p in gen.parameters()]
    d_together = [p.grad.clone() for p in disc.parameters()]
    gen.zero_grad(set_to_none=True), disc.zero_grad(set_to_none=True)
    losses, _ = loss(target, gen(target), 1, gen.conv_out.weight, disc)
    losses["decoder"].backward()
    for a, b in zip(together, [p.grad for p in gen.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)
    gen.zero_grad(set_to_none=True)
    losses, _ = loss(target, gen(target), 1, gen.conv_out.weight, disc)
    losses["discriminator"].backward()
    for a, b in zip(d_together, [p.grad for p in disc.parameters()]):
        assert torch.allclose(a, b, atol=1e-6)


def _two_grad_reference(lpips_model, gen, disc, target):
    """The former computation: recon, nll, g_loss and the adaptive weight from two autograd.grad passes at the last
    layer, ||dNLL/dW|| / (||dG/dW|| + 1e-4) clamped and times disc_weight 0.5."""
    recon = gen(target)
    nll = (recon - target).abs().mean() + lpips_model(recon, target).mean()
    g_loss = -disc(recon).mean()
    w = gen.conv_out.weight
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g_loss, w, retain_graph=True)[0].norm()
    return recon, nll, g_loss, ((gn / (gg + 1e-4)).clamp(0, 1e4) * 0.5).detach()


def test_adaptive_weight_formula(lpips_model):
    gen, disc, loss, target = _setup(lpips_model, disc_start=0)
    recon, nll, g_loss, expected = _two_grad_reference(lpips_model, gen, disc, target)
    total, weight = loss.generator_loss(nll, g_loss, recon, gen.conv_out.weight)
    torch.testing.assert_close(weight, expected)
    torch.testing.assert_close(total, nll + expected * g_loss)


def test_one_backward_loss_has_the_two_grad_gradients(lpips_model):
    """The decoder loss built from gradients w.r.t. the reconstruction gives every decoder weight the gradient of
    nll + w * g_loss with w from the two autograd.grad passes at the last layer (the former computation)."""
    gen, disc, loss, target = _setup(lpips_model, disc_start=0)
    _, nll, g_loss, weight = _two_grad_reference(lpips_model, gen, disc, target)
    reference = nll + weight * g_loss
    expected = torch.autograd.grad(reference, list(gen.parameters()))

    losses, logs = loss(target, gen(target), 0, gen.conv_out.weight, disc)
    got = torch.autograd.grad(losses["decoder"], list(gen.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(losses["decoder"].detach(), reference.detach())
    assert float(logs["d_weight"]) > 0


def test_hinge_loss_values():
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(1.0)


def test_lpips_offline(tmp_path, lpips_model):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert lpips_model(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert not any(p.requires_grad for p in lpips_model.parameters())
    trunk_file = LPIPS_TRUNKS["alex"][0]
    with pytest.raises(AsukaError, match=trunk_file):
        build_lpips("alex", lpips_dir=tmp_path)
    # a trunk file in the torchvision layout is read from weights_dir
    import torchvision

    trunk = torchvision.models.alexnet(weights=None).state_dict()
    torch.save(trunk, tmp_path / trunk_file)
    model, info = build_lpips("alex", lpips_dir=tmp_path)
    assert info["trunk_file"] == str(tmp_path / trunk_file)
    assert torch.equal(getattr(model.net.slice1, "0").weight, trunk["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "10").weight, trunk["features.10.weight"])


@pytest.mark.parametrize("mode", ["fp32", "autocast"])
def test_stage3_vae_encode_precision(mode):
    """decoder_train.vae_encode: fp32 ignores the step's bf16 autocast (exact latents); autocast encodes under it
    (close to fp32, not equal: the convolutions ran in bf16). Float32 latents either way."""
    from asuka.models.sd import build_tiny_sd
    from asuka.training.decoder import DecoderStage

    stage = DecoderStage.__new__(DecoderStage)  # only what _encode reads
    stage.sd_vae, stage.vae_encode = build_tiny_sd(0).vae.eval(), mode
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    exact = stage._encode(image, sample=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = stage._encode(image, sample=False)
    assert got.dtype == torch.float32
    if mode == "fp32":
        assert torch.equal(got, exact)
    else:
        assert not torch.equal(got, exact)
        torch.testing.assert_close(got, exact, rtol=0.05, atol=0.05)
