"""Converters from the released ASUKA (FLUX.1-Fill) files (``yikaiwang/ASUKA-FLUX.1-Fill``, official code in
``Yikai-Wang/asuka-misato/asuka-flux``) to our ``save_pretrained`` folders.

``scripts/convert_asuka.py src=DIR out=DIR`` (:func:`asuka.models.convert.released.convert_asuka`) writes, for the
files found in ``src``::

    out/mae/              MaskedAutoencoderViT, preprocess=official   <- mae_300.pth
    out/alignment/t5/     AlignmentModule(block=flux_single), txt     <- asuka_alignment_t5.pt
    out/alignment/clip/   AlignmentModule(block=flux_single), vec     <- asuka_alignment_clip.pt (mean over tokens)
    out/decoder/          AsukaDecoder (FLUX AE encoder, no quant convs, raw AE latents) <- asuka_decoder.ckpt
    out/conditions/       vec.safetensors, txt_256.safetensors (null pair), txt.safetensors (stored prompt)
    out/conversion_report.json   sha256 of each source, dropped / renamed keys, shapes

Each folder loads with the class's ``from_pretrained``. The key maps live in :mod:`.alignment` and
:mod:`.ldm_decoder` (strict loading: :mod:`.strict`); the MAE uses :mod:`asuka.models.mae_import`.
"""
