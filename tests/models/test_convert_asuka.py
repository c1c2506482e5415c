"""``scripts/convert_asuka.py``: files in the official ASUKA (FLUX.1-Fill) layouts (key names and shapes of the
official code, random values; the decoder at its full width on a small image) convert into folders that load strictly
and compute what the official modules compute (the official forwards written out in ``official_layouts.py`` and
``test_alignment_flux.py``)."""
from __future__ import annotations

import hashlib
import json
import sys
import types

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from official_layouts import (alignment_state, decoder_shapes, encoder_shapes, official_decode, official_encode,
                              random_state)
from test_alignment_flux import block_formula

from asuka.models.alignment import AlignmentModule
from asuka.models.convert.ldm_decoder import convert_ldm_decoder
from asuka.models.convert.released import convert_asuka
from asuka.models.decoder import AsukaDecoder
from asuka.models.mae import MaskedAutoencoderViT
from asuka.utils.errors import AsukaError, ConfigError

MAE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=4,
           decoder_num_heads=2, mlp_ratio=2.0, prior_layer=3)
T5, CLIP = 128, 64           # head widths (official: 4096, 768); 64-wide heads as in the official code
ENCODER = (32, 32, 32, 32)   # the AE encoder's widths may be small; the decoder's may not (fixed condition encoder)
LIGHTNING = "pytorch_lightning.callbacks.model_checkpoint"


def _lightning_checkpoint(state: dict) -> dict:
    """What a PyTorch Lightning 1.4 checkpoint holds besides the weights: the callback class as a dict key (pickled
    by name; the class comes from a stand-in module here), numpy scalars in the scheduler state."""
    module = types.ModuleType(LIGHTNING)
    module.ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": LIGHTNING})
    return {"state_dict": state, "epoch": 3, "global_step": 50000, "pytorch-lightning_version": "1.4.2",
            "callbacks": {module.ModelCheckpoint: {"best_model_path": "last.ckpt"}},
            "lr_schedulers": [{"last_lr": np.float64(8e-5)}], "_module": module}


def _save_lightning(ckpt: dict, path) -> None:
    module = ckpt.pop("_module")
    parents = ["pytorch_lightning", "pytorch_lightning.callbacks"]
    added = [name for name in [*parents, LIGHTNING] if name not in sys.modules]
    for name in parents:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[LIGHTNING] = module
    try:
        torch.save(ckpt, path)
    finally:
        for name in added:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def decoder_state() -> dict[str, torch.Tensor]:
    state = random_state(decoder_shapes(16) | encoder_shapes(16, ENCODER, 1), seed=1)
    return {k: v.bfloat16() for k, v in state.items()}  # bf16 values: half the file, exact in fp32


@pytest.fixture(scope="module")
def released(tmp_path_factory, decoder_state):
    """A ckpt/ folder with every released file, and the converted folder."""
    src, out = tmp_path_factory.mktemp("ckpt"), tmp_path_factory.mktemp("converted")
    torch.manual_seed(0)
    mae = MaskedAutoencoderViT(**MAE).state_dict()
    torch.save({"model": mae, "epoch": 300, "args": __import__("argparse").Namespace(lr=1e-4)}, src / "mae_300.pth")
    torch.save(alignment_state(32, T5, seed=2), src / "asuka_alignment_t5.pt")
    torch.save(alignment_state(32, CLIP, seed=3), src / "asuka_alignment_clip.pt")
    _save_lightning(_lightning_checkpoint({**decoder_state, "loss.logvar": torch.zeros(())}),
                    src / "asuka_decoder.ckpt")
    torch.save(torch.randn(CLIP).bfloat16(), src / "vec.pt")  # the official code broadcasts: [768] or [1, 768]
    torch.save(torch.randn(1, 16, T5).bfloat16(), src / "txt_256.pt")
    torch.save(torch.randn(1, 20, T5).bfloat16(), src / "txt.pt")
    cfg = _cfg(src, out)
    report = json.loads(convert_asuka(cfg).read_text())
    return src, out, report


def _cfg(src, out):
    cfg = compose_config("convert_asuka", [f"src={src}", f"out={out}"])
    OmegaConf.update(cfg, "model.mae", MAE, merge=False)
    OmegaConf.update(cfg, "model.alignment", dict(in_dim=32, out_dim=T5, depth=4, num_heads=T5 // 64, mlp_ratio=4.0,
                                                  block="flux_single"), merge=False)
    OmegaConf.update(cfg, "model.alignment_clip", dict(in_dim=32, out_dim=CLIP, depth=4, num_heads=1, mlp_ratio=4.0,
                                                       block="flux_single"), merge=False)
    OmegaConf.update(cfg, "model.decoder.down_block_out_channels", list(ENCODER))
    OmegaConf.update(cfg, "model.decoder.layers_per_down_block", 1)
    return cfg


def test_layout_report_and_strict_folders(released) -> None:
    src, out, report = released
    for part in ("mae", "alignment/t5", "alignment/clip", "decoder"):
        assert (out / part / "config.json").is_file()
    sources = report["sources"]
    assert set(sources) == {"mae_300.pth", "asuka_alignment_t5.pt", "asuka_alignment_clip.pt", "asuka_decoder.ckpt",
                            "vec.pt", "txt_256.pt", "txt.pt"} and report["missing"] == []
    for name, entry in sources.items():
        assert entry["sha256"] == hashlib.sha256((src / name).read_bytes()).hexdigest()
    dec = sources["asuka_decoder.ckpt"]
    assert sorted(dec["dropped"]) == sorted([k for k in decoder_shapes(16) if ".up_layers." in k] + ["loss.logvar"])
    assert dec["renamed"]["decoder.up.3.block.0.conv1.weight"] == "decoder.up_blocks.0.resnets.0.conv1.weight"
    assert dec["renamed"]["decoder.encoder.layers.0.weight"] == "decoder.condition_encoder.layers.0.weight"
    assert dec["renamed"]["decoder.mid.attn_1.q.weight"] == "decoder.mid_block.attentions.0.to_q.weight"
    assert dec["shapes"]["decoder.mid_block.attentions.0.to_q.weight"] == [512, 512]
    t5 = sources["asuka_alignment_t5.pt"]
    assert t5["dropped"] == sorted(f"{i}.modulation.lin.{p}" for i in range(1, 5) for p in ("bias", "weight"))
    assert t5["renamed"]["2.norm.query_norm.scale"] == "blocks.1.query_norm.scale"
    assert t5["renamed"]["5.bias"] == "norm.bias"
    assert sources["mae_300.pth"]["dropped"] == ["args", "epoch"]


def test_decoder_decodes_what_the_official_decoder_decodes(released, decoder_state) -> None:
    _, out, _ = released
    decoder = AsukaDecoder.from_pretrained(out / "decoder").float().eval()
    config = decoder.config
    assert (config.latent_channels, config.use_quant_conv, config.use_post_quant_conv) == (16, False, False)
    assert config.condition_mask_channel and config.fusion_mask == "area_any" and config.scaling_factor == 0.3611
    assert not hasattr(decoder.quant_conv, "weight")
    sd = {k: v.float() for k, v in decoder_state.items()}
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 4, 4, generator=g)
    image = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 5:20, 3:17] = 1.0
    mask[1, :, 12:32, 9:30] = 0.7  # soft values reach the final blend as they are
    with torch.no_grad():
        ours = decoder.decode(z, image=image, mask=mask).sample
        ref = official_decode(sd, z, image, mask)
        assert ref.abs().max() > 0.1
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(decoder.encoder(image), official_encode(sd, image), rtol=1e-4, atol=1e-4)


def test_alignment_heads_compute_the_official_formula(released) -> None:
    src, out, _ = released
    for name, width in (("t5", T5), ("clip", CLIP)):
        model = AlignmentModule.from_pretrained(out / "alignment" / name).float().eval()
        assert model.config.block == "flux_single" and model.config.out_dim == width
        sd = {k: v.double() for k, v in torch.load(src / f"asuka_alignment_{name}.pt").items()}
        prior = torch.randn(2, 16, 32)
        x = prior.double() @ sd["0.weight"].T + sd["0.bias"]
        for i in range(1, 5):
            p = {n: sd[f"{i}.{n}"] for n in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")}
            p["query_scale"], p["key_scale"] = sd[f"{i}.norm.query_norm.scale"], sd[f"{i}.norm.key_norm.scale"]
            x = block_formula(p, x, width // 64)
        x = torch.nn.functional.layer_norm(x, (width,), sd["5.weight"], sd["5.bias"], eps=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(model(prior).double(), x, rtol=0, atol=5e-5)


def test_mae_and_conditions(released) -> None:
    src, out, report = released
    mae = MaskedAutoencoderViT.from_pretrained(out / "mae")
    assert mae.config.preprocess == "official" and report["sources"]["mae_300.pth"]["preprocess"] == "official"
    released_mae = torch.load(src / "mae_300.pth", weights_only=False)["model"]
    assert all(torch.equal(v, released_mae[k]) for k, v in mae.state_dict().items())
    from safetensors.torch import load_file

    for stem in ("vec", "txt_256", "txt"):
        stored = load_file(out / "conditions" / f"{stem}.safetensors")
        released_tensor = torch.load(src / f"{stem}.pt")
        assert list(stored) == [stem] and torch.equal(stored[stem], released_tensor.reshape(stored[stem].shape))
        assert stored[stem].shape[0] == 1 and stored[stem].ndim == (2 if stem == "vec" else 3)


def test_refusals(tmp_path, decoder_state) -> None:
    expect = {}
    bad = dict(decoder_state)
    bad["decoder.encoder.layers.0.weight"] = torch.zeros(256, 4, 3, 3)
    with pytest.raises(AsukaError, match="gate_conv: true"):
        convert_ldm_decoder({"state_dict": bad}, "d.ckpt", expect)
    with pytest.raises(AsukaError, match=r"unexpected keys .*decoder\.mid\.extra\.weight"):
        convert_ldm_decoder({"state_dict": {**decoder_state, "decoder.mid.extra.weight": torch.zeros(1)}}, "d.ckpt",
                            expect)
    missing = {k: v for k, v in decoder_state.items() if k != "decoder.up.1.block.2.conv2.bias"}
    with pytest.raises(AsukaError, match=r"missing keys .*decoder\.up_blocks\.2\.resnets\.2\.conv2\.bias"):
        convert_ldm_decoder({"state_dict": missing}, "d.ckpt", expect)
    with pytest.raises(ConfigError, match="model.decoder.up_block_out_channels"):
        convert_ldm_decoder({"state_dict": decoder_state}, "d.ckpt", {"up_block_out_channels": [64, 128, 256, 256]})
    # a file of the wrong shape: one line naming it
    torch.save(torch.zeros(1, 32), tmp_path / "vec.pt")
    with pytest.raises(AsukaError, match=r"vec.pt: shape \[1, 32\], expected \[1, 64\]"):
        convert_asuka(_cfg(tmp_path, tmp_path / "out"))
    (tmp_path / "vec.pt").unlink()
    torch.save(alignment_state(32, CLIP, seed=3), tmp_path / "asuka_alignment_t5.pt")
    with pytest.raises(AsukaError, match="asuka_alignment_t5.pt: a head of in_dim 32, width 64"):
        convert_asuka(_cfg(tmp_path, tmp_path / "out"))
    state = alignment_state(32, T5)
    state["3.attn.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "asuka_alignment_t5.pt")
    with pytest.raises(AsukaError, match=r"unexpected keys .*3\.attn\.weight"):
        convert_asuka(_cfg(tmp_path, tmp_path / "out"))
    (tmp_path / "asuka_alignment_t5.pt").unlink()
    mae = MaskedAutoencoderViT(**MAE).state_dict()
    torch.save({"model": {**mae, "decoder_extra.weight": torch.zeros(1)}}, tmp_path / "mae_300.pth")
    with pytest.raises(AsukaError, match=r"mae_300.pth: not the released MAE layout \(unexpected: \['decoder_extra"):
        convert_asuka(_cfg(tmp_path, tmp_path / "out"))
    (tmp_path / "mae_300.pth").unlink()
    with pytest.raises(ConfigError, match="holds none of the released files"):
        convert_asuka(_cfg(tmp_path, tmp_path / "out"))


def test_decoder_folder_loads_quietly(released, monkeypatch) -> None:
    """diffusers' base class writes block_out_channels / force_upcast into every config; loading must not warn that
    they "will be ignored"."""
    import diffusers.configuration_utils as config_utils

    warnings: list[str] = []
    monkeypatch.setattr(config_utils.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    AsukaDecoder.from_pretrained(released[1] / "decoder")
    assert not [w for w in warnings if "will be ignored" in w]


def test_sd_width_decoder_keeps_its_quant_convs() -> None:
    """Latent width 4 (an SD-1.5 ASUKA decoder in the LDM layout): quant / post-quant convs are converted and used
    (official LDM ``AutoencoderKL.decode``: ``decoder(post_quant_conv(z))``)."""
    shapes = decoder_shapes(4, mask_channel=False) | encoder_shapes(4, ENCODER, 1)
    shapes |= {"quant_conv.weight": (8, 8, 1, 1), "quant_conv.bias": (8,), "post_quant_conv.weight": (4, 4, 1, 1),
               "post_quant_conv.bias": (4,)}
    sd = random_state(shapes, seed=4)
    decoder, report = convert_ldm_decoder({"state_dict": sd}, "sd.ckpt", {})
    config = decoder.config
    assert (config.latent_channels, config.use_quant_conv, config.scaling_factor) == (4, True, 0.18215)
    assert not config.condition_mask_channel and report["renamed"]["post_quant_conv.weight"] == "post_quant_conv.weight"
    g = torch.Generator().manual_seed(0)
    z, image = torch.randn(1, 4, 4, 4, generator=g), torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    with torch.no_grad():
        ours = decoder.decode(z, image=image, mask=mask).sample
        z_post = torch.nn.functional.conv2d(z, sd["post_quant_conv.weight"], sd["post_quant_conv.bias"])
        torch.testing.assert_close(ours, official_decode(sd, z_post, image, mask, mask_channel=False),
                                   rtol=1e-4, atol=1e-4)


def test_report_compares_the_release_encoder_with_a_flux_ae(released, tmp_path) -> None:
    """``flux_ae=``: max |diff| of the checkpoint's encoder.* against a FLUX AE's encoder (0 when it is a copy)."""
    from diffusers import AutoencoderKL

    from asuka.models.convert.released import compare_encoder
    from asuka.models.decoder import AsukaDecoder

    _, out, _ = released
    decoder = AsukaDecoder.from_pretrained(str(out / "decoder"))
    ae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                       block_out_channels=ENCODER, layers_per_block=1, latent_channels=16, norm_num_groups=32,
                       use_quant_conv=False, use_post_quant_conv=False)
    ae.encoder.load_state_dict(decoder.encoder.state_dict())
    ae.save_pretrained(str(tmp_path / "flux" / "vae"))
    same = compare_encoder(decoder, tmp_path / "flux")
    assert same["comparable"] and same["equal"] and same["max_abs_diff"] == 0.0
    with torch.no_grad():
        ae.encoder.conv_in.bias[0] += 0.5
    ae.save_pretrained(str(tmp_path / "flux" / "vae"))
    other = compare_encoder(decoder, tmp_path / "flux")
    assert not other["equal"] and abs(other["max_abs_diff"] - 0.5) < 1e-6
    with pytest.raises(ConfigError, match="flux_ae"):
        compare_encoder(decoder, tmp_path / "nothing")


def test_out_is_never_mixed_nor_left_half_written(released, tmp_path) -> None:
    """A non-empty out is refused (overwrite=true replaces it whole); a failed conversion leaves no parts behind."""
    src, _, _ = released
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier conversion")
    with pytest.raises(ConfigError, match="is not empty.*overwrite=true"):
        convert_asuka(_cfg(src, out))
    cfg = _cfg(src, out)
    OmegaConf.update(cfg, "overwrite", True)
    report = json.loads(convert_asuka(cfg).read_text())
    assert not (out / "stale.txt").exists() and (out / "mae" / "config.json").is_file()
    assert set(report["sources"]) == set(json.loads((released[1] / "conversion_report.json").read_text())["sources"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or replaced folder left
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mae_300.pth").symlink_to(src / "mae_300.pth")
    torch.save(torch.zeros(1, 32), bad / "vec.pt")  # converted after the MAE, and wrong
    with pytest.raises(AsukaError, match="vec.pt"):
        convert_asuka(_cfg(bad, tmp_path / "fresh"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out"]  # no partial fresh/, no temporary folder
