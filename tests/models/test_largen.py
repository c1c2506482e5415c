"""LAR-Gen models: lambda = 0 is the plain UNet, Assign equals diffusers' IP-Adapter, Refine's reference keys, the
h94/IP-Adapter layout both ways, and save/load round trips."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from largen_helpers import (CLIP_WIDTH, RESAMPLER, h94_state_dict, halved_clip_input, tiny_adapter,  # noqa: E402
                            tiny_unet)

from asuka.models.largen.assign import AssignAdapter, read_ip_adapter_file, save_ip_adapter_file  # noqa: E402
from asuka.models.largen.attention import READ, LarGenAttnProcessor  # noqa: E402
from asuka.models.largen.clip_image import (build_image_encoder, clip_pixels, image_hidden_states,  # noqa: E402
                                            prepare_subject)
from asuka.models.largen.net import LarGenNet  # noqa: E402
from asuka.models.largen.refine import RefineNet  # noqa: E402
from asuka.models.sd import build_tiny_sd  # noqa: E402
from asuka.utils.errors import AsukaError  # noqa: E402

TINY_CLIP = dict(source="tiny", hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2,
                 num_attention_heads=4, image_size=32, patch_size=8, seed=0)


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 9, 8, 8, generator=g), torch.tensor([10, 700][:batch]),
            torch.randn(batch, 7, 32, generator=g), torch.randn(batch, 17, CLIP_WIDTH, generator=g))


def test_lambda_zero_and_text_only_equal_the_plain_unet():
    plain = tiny_unet()
    net = LarGenNet(copy.deepcopy(plain), tiny_adapter(plain))
    x, t, text, image = inputs()
    with torch.no_grad():
        expected = plain(x, t, encoder_hidden_states=text).sample
        at_zero = net(x, t, text, image, ip_scale=0.0)
        text_only = net(x, t, text, None)
        with_image = net(x, t, text, image, ip_scale=1.0)
    assert torch.allclose(at_zero, expected, atol=1e-5)
    assert torch.allclose(text_only, expected, atol=1e-5)
    assert (with_image - expected).abs().max() > 1e-3  # the image branch is live


def test_unet_state_dict_stays_vanilla(tmp_path):
    plain = tiny_unet()
    net = LarGenNet(copy.deepcopy(plain), tiny_adapter(plain))
    net.assign.to_k_ip[0].weight.data.add_(1.0)
    assert net.unet.state_dict().keys() == plain.state_dict().keys()
    net.unet.save_pretrained(tmp_path / "unet")
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in net.unet.state_dict().items())
    assert all(isinstance(p, AttnProcessor2_0) for p in reloaded.attn_processors.values())


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_ip_adapter_file_round_trip(tmp_path, suffix):
    """A file in h94/IP-Adapter's layout (IP-Adapter's key names, tiny shapes) -> our adapter -> the same file."""
    state = h94_state_dict()
    path = tmp_path / f"ip-adapter-plus_sd15{suffix}"
    if suffix == ".bin":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({f"{p}.{k}": v for p, d in state.items() for k, v in d.items()}, str(path))
    adapter = AssignAdapter.from_ip_adapter_file(path, tiny_unet(), dim_head=RESAMPLER["dim_head"])
    assert (adapter.config.depth, adapter.config.num_tokens, adapter.config.heads) == (4, 4, 1)
    back = adapter.to_ip_adapter_state_dict()
    for part in ("image_proj", "ip_adapter"):
        assert back[part].keys() == state[part].keys()
        assert all(torch.equal(back[part][k], state[part][k]) for k in state[part])
    out = save_ip_adapter_file(adapter, tmp_path / f"again{suffix}")
    again = read_ip_adapter_file(out)
    assert all(torch.equal(again["ip_adapter"][k], state["ip_adapter"][k]) for k in state["ip_adapter"])


def test_ip_adapter_file_errors(tmp_path):
    state = h94_state_dict(layers=(1, 3, 5, 9))
    torch.save(state, tmp_path / "bad.bin")
    with pytest.raises(AsukaError, match="bad.bin: ip_adapter key '9.to_k_ip.weight'"):
        AssignAdapter.from_ip_adapter_file(tmp_path / "bad.bin", tiny_unet())
    torch.save({"other": torch.zeros(1)}, tmp_path / "not.bin")
    with pytest.raises(AsukaError, match="not.bin"):
        AssignAdapter.from_ip_adapter_file(tmp_path / "not.bin", tiny_unet())


@pytest.mark.parametrize("scale", [1.0, 0.4])
def test_decoupled_attention_equals_diffusers_ip_adapter(tmp_path, scale):
    """Our adapter, written in the h94 layout and loaded by diffusers' load_ip_adapter (IPAdapterAttnProcessor2_0 +
    IPAdapterPlusImageProjection), gives the same UNet output as our processors."""
    unet = tiny_unet()
    adapter = tiny_adapter(unet)
    save_ip_adapter_file(adapter, tmp_path / "models" / "ip-adapter-plus_sd15.bin")
    sd = build_tiny_sd(0)
    pipe = StableDiffusionInpaintPipeline(vae=sd.vae, text_encoder=None, tokenizer=None, unet=sd.unet,
                                          scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.load_ip_adapter(str(tmp_path), subfolder="models", weight_name="ip-adapter-plus_sd15.bin",
                         image_encoder_folder=None, low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(scale)
    net = LarGenNet(unet, adapter)
    x, t, text, image = inputs()
    with torch.no_grad():
        ours = net(x, t, text, image, ip_scale=scale)
        theirs = pipe.unet(x, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [image[:, None]]}).sample
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


def test_reference_of_own_features_leaves_self_attention_unchanged():
    unet = tiny_unet()
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
    attn = unet.get_submodule(name)
    h = torch.randn(2, 64, 32)
    with torch.no_grad():
        plain = attn(h)
        attn.set_processor(LarGenAttnProcessor(name, reference=READ))
        own = attn(h, reference_bank={name: h.clone()})
        absent = attn(h, reference_bank={})
        bank = {name: torch.randn(2, 64, 32)}
        kept = attn(h, reference_bank=bank, reference_keep=torch.tensor([1.0, 0.0]))
        other = attn(h, reference_bank=bank)
    assert torch.allclose(own, plain, atol=1e-5)
    assert torch.allclose(kept[1], plain[1], atol=1e-5) and torch.allclose(kept[0], other[0], atol=1e-6)
    assert torch.allclose(absent, plain, atol=1e-6)
    assert (other - plain).abs().max() > 1e-3


def test_refinenet_feeds_the_up_blocks_and_survives_gradient_checkpointing():
    unet = tiny_unet()
    refine = RefineNet.from_unet(unet, CLIP_WIDTH)
    assert refine.unet.conv_in.weight.shape[1] == 4
    assert torch.equal(refine.unet.conv_in.weight, unet.conv_in.weight[:, :4])
    net = LarGenNet(unet, tiny_adapter(unet)).requires_grad_(False)
    x, t, text, image = inputs()
    subject = torch.randn(2, 4, 8, 8)

    def grads(checkpointing: bool):
        refine.zero_grad()
        refine.train()
        if checkpointing:
            refine.enable_gradient_checkpointing()
            net.unet.enable_gradient_checkpointing()
        net.train()
        bank = refine(subject, t, image)
        assert sorted(bank) == [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn1" for i in (0, 1)]
        out = net(x, t, text, image, reference_bank=bank)
        out.square().mean().backward()
        return out.detach(), {k: p.grad.clone() for k, p in refine.named_parameters() if p.grad is not None}

    out, plain = grads(False)
    with torch.no_grad():
        assert (out - net(x, t, text, image)).abs().max() > 1e-4  # the reference changes the output
    out_ckpt, ckpt = grads(True)
    assert torch.allclose(out, out_ckpt, atol=1e-5)
    assert plain["detail_encoder.weight"].abs().sum() > 0
    assert plain.keys() == ckpt.keys()
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-5, rtol=1e-4) for k in plain)


def test_round_trips_keep_every_weight(tmp_path):
    unet = tiny_unet()
    adapter, refine = tiny_adapter(unet), RefineNet.from_unet(unet, CLIP_WIDTH)
    for module, cls in ((adapter, AssignAdapter), (refine, RefineNet)):
        module.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert loaded.state_dict().keys() == module.state_dict().keys()
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in module.state_dict().items())
    assert dict(loaded.config)["unet_config"]["in_channels"] == 4
    assert isinstance(next(iter(loaded.unet.attn_processors.values())), LarGenAttnProcessor)


def test_image_encoder_tiny_and_local_folder(tmp_path):
    encoder = build_image_encoder(TINY_CLIP)
    encoder.save_pretrained(tmp_path / "image_encoder")
    loaded = build_image_encoder({"source": "pretrained"}, tmp_path / "image_encoder")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        (pen, last), (pen2, last2) = image_hidden_states(encoder, pixels), image_hidden_states(loaded, pixels)
    assert pen.shape == last.shape == (1, 17, CLIP_WIDTH)
    assert torch.allclose(pen, pen2, atol=1e-5) and torch.allclose(last, last2, atol=1e-5)
    assert not torch.allclose(pen, last)
    with pytest.raises(AsukaError, match="no CLIP image encoder"):
        build_image_encoder({"source": "pretrained"}, tmp_path)


def test_prepare_subject_crops_whitens_and_pads():
    """As released (largen_ui.py, get_bbox_from_mask): the box ends on the last masked row/column and the crop leaves
    them out; white square of int(1.02 * longer side), centred. Expected canvas built here by hand."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 250, (60, 120, 3), dtype=np.uint8)
    mask = np.zeros((60, 120), bool)
    mask[10:40, 5:106] = True  # box rows 10..39, cols 5..105 -> crop [10:39) x [5:105): 29 x 100
    mask[10, 5] = False
    out = np.asarray(prepare_subject(Image.fromarray(pixels), mask))
    expected = np.full((102, 102, 3), 255, np.uint8)  # int(100 * 1.02)
    expected[36:65, 1:101] = np.where(mask[10:39, 5:105, None], pixels[10:39, 5:105], 255)  # top (102 - 29) // 2
    np.testing.assert_array_equal(out, expected)
    few = np.zeros((60, 120), bool)
    few[:3, :3] = True  # 9 pixels: under the released 10, the whole image
    np.testing.assert_array_equal(np.asarray(prepare_subject(Image.fromarray(pixels), few))[31:91, 1:121], pixels)


def test_clip_pixels_resize_straight_bilinear_antialiased():
    """Released: torchvision Resize((224, 224)) on the padded subject, i.e. antialiased bilinear; at a 2x reduction
    that is the separable [1, 3, 3, 1] / 8 filter, computed here independently (interior pixels)."""
    encoder = SimpleNamespace(config=SimpleNamespace(image_size=16), dtype=torch.float32)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = halved_clip_input((x + 1) / 2)
    torch.testing.assert_close(clip_pixels(x, encoder)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
