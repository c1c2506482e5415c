"""Stage-1 prior: the MAE-FAR "finetune" masked autoencoder (ViT, no class token) that ASUKA reads its prior from.

Spec section 1. Images come in as ``[B, 3, H, W]`` in [-1, 1] and masks as ``[B, 1, H, W]`` with 1 = hole; the model
converts to ImageNet normalisation itself. Parameter names follow the released MAE / MAE-FAR layout
(``blocks.N.attn.qkv.weight``, ``blocks.N.norm1``, ``blocks.N.mlp.fc1``, ``decoder_blocks.N...``, ``decoder_pred``),
so released weights load by name (see :mod:`asuka.models.mae_import`). The ViT parts are in
:mod:`asuka.models.mae_blocks`, the resizing of inputs to ``img_size`` in :mod:`asuka.models.mae_preprocess`; this
module keeps the model (the class name and module path that saved ``config.json`` / ``model_index.json`` record).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from asuka.data.images import IMAGENET_MEAN, IMAGENET_STD
from asuka.models.mae_blocks import Block, PatchEmbed, sincos_pos_embed_2d
from asuka.models.mae_preprocess import PREPROCESS, to_model_size

log = logging.getLogger(__name__)


class MaskedAutoencoderViT(ModelMixin, ConfigMixin):
    """MAE-FAR finetune MAE without a class token: the source of ASUKA's reconstruction prior.

    Inference (:meth:`prior`, :meth:`reconstruct`) sees all tokens, with masked patches hidden from attention as keys;
    training (:meth:`training_loss`) drops 75% of the tokens, always including every masked patch.
    """

    @register_to_config
    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        prior_layer: int = 6,
        norm_eps: float = 1e-6,
        preprocess: str | None = "ours",
    ) -> None:
        super().__init__()
        if preprocess is None:  # a config's "the weights' own": a new model has ours
            preprocess = "ours"
            self.register_to_config(preprocess=preprocess)
        if preprocess not in PREPROCESS:
            raise ValueError(f"preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
        if in_chans != 3:
            raise ValueError(f"in_chans must be 3 (RGB, ImageNet statistics), got {in_chans}")
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if not 0 <= prior_layer <= decoder_depth:
            raise ValueError(f"prior_layer must be in [0, decoder_depth={decoder_depth}], got {prior_layer}")
        self.grid = img_size // patch_size
        self.num_patches = self.grid * self.grid

        # Encoder.
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid)[None])
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)

        # Decoder.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(decoder_embed_dim, self.grid)[None])
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, norm_eps) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)

        # MAE-FAR finetune additions: an embedding of [masked image, mask] for partially masked patches.
        self.decoder_patch_embed = PatchEmbed(patch_size, in_chans + 1, decoder_embed_dim)
        self.alpha = nn.Parameter(torch.tensor(1.0))

        self.register_buffer("img_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("img_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        """MAE initialisation: xavier-uniform linears and patch projections, LayerNorm 1/0, mask token N(0, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for pe in (self.patch_embed, self.decoder_patch_embed):
            w = pe.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(pe.proj.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    # --------------------------------------------------------------- helpers
    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _check_inputs(self, image: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Shape checks, so a wrong layout fails with a clear message instead of deep inside a conv."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if mask is not None and (mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0]
                                 or mask.shape[2:] != image.shape[2:]):
            raise ValueError(
                f"mask must be [B, 1, H, W] matching the image {tuple(image.shape)}, got {tuple(mask.shape)}"
            )

    def _to_model_size(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and mask at ``img_size``, by the rule ``config.preprocess`` names
        (:func:`asuka.models.mae_preprocess.to_model_size`)."""
        self._check_inputs(image, mask)
        return to_model_size(image, mask, self.config.img_size, self.config.get("preprocess", "ours"))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> ImageNet normalisation (the statistics the released MAEs were trained with)."""
        return ((image.float() + 1.0) * 0.5 - self.img_mean.float()) / self.img_std.float()

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation -> [-1, 1]."""
        return (x.float() * self.img_std.float() + self.img_mean.float()) * 2.0 - 1.0

    def _patch_fraction(self, mask: torch.Tensor) -> torch.Tensor:
        """Fraction of hole pixels in each patch, ``[B, L]`` (mask already at img_size)."""
        return F.avg_pool2d(mask.float(), self.patch_size).flatten(1)

    def patch_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` float, 1 where a patch has ANY hole pixel (area-downsample to the token grid, then > 0).

        ``mask`` is ``[B, 1, img_size, img_size]``; values > 0.5 count as hole.
        """
        s = self.config.img_size
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (s, s):
            raise ValueError(f"patch_mask needs a mask [B, 1, {s}, {s}], got {tuple(mask.shape)}")
        return (self._patch_fraction((mask > 0.5).float()) > 0).float()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, L, p*p*C]`` in the released order (row, column, channel inside a patch)."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, channels: int = 3) -> torch.Tensor:
        """Inverse of :meth:`patchify` for a square token grid."""
        b, n, _ = x.shape
        p, g = self.patch_size, self.grid
        x = x.reshape(b, g, g, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, g * p, g * p)

    def _clamped_alpha(self) -> torch.Tensor:
        return self.alpha.clamp(0.0, 1.0)

    # --------------------------------------------------------------- encoder
    def _encoder(self, x_norm: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """All tokens through the encoder; ``key_mask`` [B, L] (1 = masked) hides those tokens as attention keys."""
        x = self.patch_embed(x_norm.to(self.dtype)) + self.pos_embed.to(self.dtype)
        km = None if key_mask is None else key_mask.bool()
        if km is not None:
            # A sample with every patch masked has no key to attend to (softmax over nothing is NaN on some
            # kernels). Its encoder output is replaced by mask tokens in the decoder anyway, so let it attend freely.
            km = km & ~km.all(dim=1, keepdim=True)
        for blk in self.blocks:
            x = blk(x, km)
        return self.norm(x)

    def _prepare(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image, masked normalised image, binary pixel mask, token mask) at img_size."""
        image, mask = self._to_model_size(image, mask)
        known = (mask < 0.5).float() if self.config.get("preprocess", "ours") == "official" else 1.0 - mask
        x_in = self.normalize(image) * known
        token_mask = (self._patch_fraction(mask) > 0).float()
        return image, x_in, mask, token_mask

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[B, L, embed_dim]`` (after ``norm``) of the visible context.

        The image is ImageNet-normalised and hole pixels are set to 0; all L tokens go through the encoder, and
        attention logits to masked patches (any hole pixel) are -inf, so unmasked tokens never see hole content.
        """
        _, x_in, _, token_mask = self._prepare(image, mask)
        return self._encoder(x_in, token_mask)

    # --------------------------------------------------------------- decoder
    def _decoder_input(
        self, latent: torch.Tensor, token_mask: torch.Tensor, x_in: torch.Tensor, pix_mask: torch.Tensor
    ) -> torch.Tensor:
        """Decoder tokens before the blocks: masked tokens -> mask_token, partial patches alpha-blended, + pos."""
        x = self.decoder_embed(latent)
        tm = token_mask[..., None]
        x = torch.where(tm.bool(), self.mask_token.to(x.dtype), x)
        x = self._blend_partial(x, x_in, pix_mask)
        return x + self.decoder_pos_embed.to(x.dtype)

    def _blend_partial(self, x: torch.Tensor, x_in: torch.Tensor, pix_mask: torch.Tensor) -> torch.Tensor:
        """Patches with some but not all pixels masked: ``x*alpha + embed([image*(1-m), m])*(1-alpha)``."""
        frac = self._patch_fraction(pix_mask)
        partial = ((frac > 0) & (frac < 1)).to(x.dtype)[..., None]
        img_embed = self.decoder_patch_embed(torch.cat([x_in * (1.0 - pix_mask), pix_mask], dim=1).to(x.dtype))
        alpha = self._clamped_alpha().to(x.dtype)
        return x * (1.0 - partial) + (x * alpha + img_embed * (1.0 - alpha)) * partial

    def prior(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ASUKA's prior ``[B, L, decoder_embed_dim]``: decoder tokens after ``prior_layer`` blocks, before the norm.

        Inputs at another size are resized to ``img_size`` first. Under ``preprocess=official`` a sample whose every
        patch is a hole gets a zero prior, as the official code does (its prior is NaN there and replaced by zeros;
        the official code zeros the whole batch when one sample is NaN, here only that sample: equal at batch size 1).
        Any other NaN is reported (FloatingPointError), never replaced: a silently zeroed prior would train or sample
        from garbage. Both checks read values back to the host, so they run on CPU tensors only: on an accelerator
        they would stall the device at every call (issue 18); a NaN prior there shows as a NaN output.
        """
        _, x_in, pix_mask, token_mask = self._prepare(image, mask)
        x = self._decoder_input(self._encoder(x_in, token_mask), token_mask, x_in, pix_mask)
        for blk in self.decoder_blocks[: self.config.prior_layer]:
            x = blk(x)
        on_host = x.device.type == "cpu"
        if self.config.get("preprocess", "ours") == "official":
            all_hole = token_mask.bool().all(dim=1)
            x = torch.where(all_hole[:, None, None], torch.zeros_like(x), x)
            if on_host and all_hole.any():
                log.warning("MAE prior: sample(s) %s are all hole; their prior is zeros (as in the official code)",
                            all_hole.nonzero().flatten().tolist())
        if on_host and torch.isnan(x).any():
            bad = torch.isnan(x).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise FloatingPointError(f"MAE prior contains NaN for sample(s) {bad} (check the weights and the inputs)")
        return x

    def reconstruct(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The MAE's own inpainting at ``img_size`` in [-1, 1]: full decoder, known pixels pasted back (mask == 0)."""
        image_s, x_in, pix_mask, token_mask = self._prepare(image, mask)
        x = self._decoder_input(self._encoder(x_in, token_mask), token_mask, x_in, pix_mask)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.denormalize(self.unpatchify(self.decoder_pred(self.decoder_norm(x))))
        out = pred * pix_mask + image_s.float() * (1.0 - pix_mask)
        return out.clamp(-1.0, 1.0)

    # -------------------------------------------------------------- training
    def sample_token_drop(
        self, token_mask: torch.Tensor, keep_ratio: float = 0.25, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE-FAR adaptive random masking: ``(ids_keep [B, K], ids_restore [B, L], removed [B, L] float)``.

        Per-sample noise U[0, 1) plus the token mask, clamped to 1, so masked patches sort last and are always
        dropped; the ``K = int(L * keep_ratio)`` lowest-noise tokens are kept. If more than ``L - K`` patches are
        masked, ties at 1.0 let some masked patches be kept (the released code does the same).
        """
        b, n = token_mask.shape
        if not 0.0 < keep_ratio < 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1), got {keep_ratio}")
        keep = int(n * keep_ratio)
        if keep < 1:
            raise ValueError(f"keep_ratio {keep_ratio} keeps no token out of {n}")
        noise = torch.rand(b, n, generator=generator, device=token_mask.device)
        noise = (noise + token_mask.float()).clamp(0.0, 1.0)
        ids_shuffle = torch.argsort(noise, dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        removed = torch.ones(b, n, device=token_mask.device)
        removed[:, :keep] = 0
        removed = torch.gather(removed, 1, ids_restore)
        return ids_shuffle[:, :keep], ids_restore, removed

    def training_loss(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        keep_ratio: float = 0.25,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MAE-FAR training forward (spec 1.2): ``(loss, pred_image)``, pred_image the raw prediction in [-1, 1] scale.

        - Token drop: :meth:`sample_token_drop` (masked patches always dropped, ``1 - keep_ratio`` of tokens removed).
        - The encoder sees only the kept tokens of the UNMASKED full image (token-level masking, no attention mask).
        - Decoder: mask tokens restored in order; patches partially covered by the loss region are blended with
          ``decoder_patch_embed([image * (1 - region), region])`` exactly as at inference, where the blend uses the
          real mask.
        - Loss region, per pixel: ``(hole pixels of removed patches) + (every pixel of randomly removed patches)``,
          i.e. ``real_mask * removed_up + (1 - token_mask) * removed_up``. The loss is the MSE against the
          ImageNet-normalised image averaged over the pixels (and channels) of that region, with no per-patch mean:
          this is MAE-FAR's finetune ``forward_loss`` (``norm_pix_loss`` off). Known pixels of masked patches are
          not in the loss (they are not in the region), which is why the blend gives the decoder those pixels.
        """
        image, pix_mask = self._to_model_size(image, mask)
        x_norm = self.normalize(image)
        token_mask = (self._patch_fraction(pix_mask) > 0).float()
        ids_keep, ids_restore, removed = self.sample_token_drop(token_mask, keep_ratio, generator)
        region = self.loss_region(pix_mask, token_mask, removed)

        # Encoder on the kept tokens only.
        x = self.patch_embed(x_norm.to(self.dtype)) + self.pos_embed.to(self.dtype)
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))

        # Decoder: restore the order with mask tokens, blend partial patches, add positions.
        b, n = token_mask.shape
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, n - x.shape[1], -1)], dim=1)
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = self._blend_partial(x, x_norm, region) + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x)).float()

        target = self.patchify(x_norm)
        weight = self.patchify(region.expand(-1, 3, -1, -1))
        loss = ((pred - target) ** 2 * weight).sum() / weight.sum()
        return loss, self.denormalize(self.unpatchify(pred))

    def loss_region(self, pix_mask: torch.Tensor, token_mask: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss region ``[B, 1, H, W]``: hole pixels of removed patches + all pixels of random removals."""
        b = pix_mask.shape[0]
        g, p = self.grid, self.patch_size

        def up(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, 1, g, g).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)

        return pix_mask * up(token_mask * removed) + up((1.0 - token_mask) * removed)

    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | None = None,
        keep_ratio: float = 0.25,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`training_loss`; ``forward`` is what DDP wraps, so the training step calls the module."""
        return self.training_loss(image, mask, generator=generator, keep_ratio=keep_ratio)

