"""Stage-3 losses: L1 + LPIPS(VGG) reconstruction of the original image, plus a hinge PatchGAN with adaptive weight.

This follows the Asymmetric VQGAN recipe the paper points to (official issue #16), with two of our choices (spec 7):
disc_weight 0.5 and the discriminator starting at step 10000 (AVQ's 50001 would never start in a 50K-step run). The
reconstruction terms are plain means (no learnable log-variance: with a frozen encoder there is no KL term for it
to balance, and the adaptive weight makes the GAN term independent of the NLL's scale).

The two losses are returned separately ("decoder", "discriminator") because the engine back-propagates their SUM:
the generator's adversarial term therefore runs the discriminator with DETACHED parameters (``functional_call``),
and the discriminator's loss sees detached reconstructions, so each graph reaches only its own optimizer's weights.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.func import functional_call

from asuka.training.modules import unwrap

class NLayerDiscriminator(ModelMixin, ConfigMixin):
    """PatchGAN discriminator (pix2pix / taming layout): strided 4x4 convs, BatchNorm, LeakyReLU(0.2), 1-channel map.

    ``forward(a, b, ...)`` runs each input through the network separately (so BatchNorm statistics stay per input,
    as with separate calls) and returns one logit map per input; one call keeps a DDP wrapper to one forward.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for n in range(1, n_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self._init_weights()

    def _init_weights(self) -> None:
        """DCGAN init (N(0, 0.02) convs, N(1, 0.02) norms), the usual start for this discriminator."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor, *more: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not more:
            return self.main(image)
        return tuple(self.main(x) for x in (image, *more))


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: 0.5 (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def frozen_call(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """Run ``module`` with its parameters detached: gradients reach the inputs but never the module's weights."""
    inner = unwrap(module)
    params = {name: p.detach() for name, p in inner.named_parameters()}
    buffers = dict(inner.named_buffers())
    return functional_call(inner, {**params, **buffers}, inputs)


class DecoderLoss(nn.Module):
    """The stage-3 objective. Call with the target, the reconstruction, the optimizer step, the decoder's last layer
    weight (for the adaptive weight) and the discriminator; get ``({"decoder", "discriminator"}, logs)``."""

    def __init__(
        self,
        lpips_model: nn.Module,
        lpips_weight: float = 1.0,
        disc_weight: float = 0.5,
        disc_start: int = 10000,
        max_adaptive_weight: float = 1e4,
    ) -> None:
        super().__init__()
        self.lpips = lpips_model
        self.lpips_weight = float(lpips_weight)
        self.disc_weight = float(disc_weight)
        self.disc_start = int(disc_start)
        self.max_adaptive_weight = float(max_adaptive_weight)

    def gan_active(self, step: int) -> bool:
        """The GAN terms are off (exactly zero) for optimizer steps ``< disc_start``."""
        return self.disc_weight > 0 and step >= self.disc_start

    def generator_loss(self, nll: torch.Tensor, g_loss: torch.Tensor, recon: torch.Tensor,
                       last_layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(nll + w * g_loss, w)`` with the adaptive weight w = ||dNLL/dW|| / (||dG/dW|| + 1e-4) at the decoder's
        last layer W, clamped to [0, 1e4], detached, times disc_weight.

        Both terms reach the decoder only through ``recon``, so their gradients w.r.t. ``recon`` are taken once
        (one backward through LPIPS, one through the discriminator) and serve twice: pulled back to W (cheap: W is
        the last layer) they give w; combined, they are the whole loss's gradient w.r.t. ``recon``. The returned
        loss has the value nll + w * g_loss and, by the chain rule, exactly that gradient for every decoder weight,
        so the engine's backward does not run LPIPS and the discriminator a second time."""
        grad_nll = torch.autograd.grad(nll, recon, retain_graph=True)[0]
        grad_g = torch.autograd.grad(g_loss, recon, retain_graph=True)[0]
        at_w = [torch.autograd.grad(recon, last_layer, grad, retain_graph=True)[0] for grad in (grad_nll, grad_g)]
        weight = at_w[0].float().norm() / (at_w[1].float().norm() + 1e-4)
        weight = weight.clamp(0.0, self.max_adaptive_weight).detach() * self.disc_weight
        pulled = (recon * (grad_nll + weight * grad_g)).sum()  # gradient: the loss's, through recon
        return (nll + weight * g_loss).detach() + pulled - pulled.detach(), weight

    def forward(
        self,
        target: torch.Tensor,
        recon: torch.Tensor,
        step: int,
        last_layer: torch.Tensor,
        discriminator: nn.Module,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | float]]:
        target = target.float()
        recon = recon.float()
        l1 = (recon - target).abs().mean()
        perceptual = self.lpips(recon, target).mean() if self.lpips_weight > 0 else recon.new_zeros(())
        nll = l1 + self.lpips_weight * perceptual
        logs = {"l1": l1.detach(), "lpips": perceptual.detach(), "nll": nll.detach()}  # tensors: no sync here
        if not self.gan_active(step):
            zero = recon.new_zeros(())
            logs.update(g_loss=0.0, d_weight=0.0, d_loss=0.0, gan_active=0.0)
            return {"decoder": nll, "discriminator": zero}, logs

        g_loss = -frozen_call(discriminator, recon).float().mean()
        if torch.is_grad_enabled() and last_layer.requires_grad and recon.requires_grad:
            decoder_loss, d_weight = self.generator_loss(nll, g_loss, recon, last_layer)
        else:  # no graph to differentiate (evaluation): report the loss at the cap
            d_weight = torch.tensor(self.disc_weight, device=recon.device)
            decoder_loss = nll + d_weight * g_loss
        logits_real, logits_fake = discriminator(target.detach(), recon.detach())
        d_loss = hinge_d_loss(logits_real.float(), logits_fake.float())
        logs.update(
            g_loss=g_loss.detach(),
            d_weight=d_weight.detach(),
            d_loss=d_loss.detach(),
            logits_real=logits_real.detach().float().mean(),
            logits_fake=logits_fake.detach().float().mean(),
            gan_active=1.0,
        )
        return {"decoder": decoder_loss, "discriminator": d_loss}, logs
