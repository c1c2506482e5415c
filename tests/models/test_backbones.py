"""The backbone layer: SD-1.5 inpainting delegates to asuka.models.sd; FLUX.1-Fill loads from a real diffusers
folder (tiny random parts written in the real layout), and its latent convention and flow-matching pair agree with
diffusers' own formulas."""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

from asuka.models import sd
from asuka.models.backbones import backbone_for, flux, get_backbone
from asuka.utils.errors import AsukaError, ConfigError

TINY = {"source": "tiny", "seed": 0}


@pytest.fixture(scope="module")
def tiny_flux() -> flux.FluxComponents:
    return flux.load_flux_fill(TINY, None)


def test_registry():
    assert backbone_for({}).name == "sd15_inpaint"
    assert backbone_for({"backbone": "flux_fill"}).pixel_multiple == 16
    with pytest.raises(ConfigError, match="model.backbone"):
        get_backbone("sd3")


def test_sd15_backbone_is_the_sd_module():
    bb = get_backbone("sd15_inpaint")
    comps = bb.load(TINY, None)
    ref = sd.load_sd_inpaint(TINY, None)
    assert all(torch.equal(a, b) for a, b in zip(comps.unet.state_dict().values(), ref.unet.state_dict().values()))
    assert bb.condition_shapes(comps).token_dim == 32 and bb.condition_shapes(comps).pooled_dim is None
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:40, 5:30] = 1
    noisy = torch.randn(1, 4, 8, 8)
    got = bb.inpaint_input(comps, noisy, image, mask, generator=torch.Generator().manual_seed(0))
    m, z = sd.encode_masked_image(comps.vae, image, mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, sd.unet_input(noisy, m, z))
    t = torch.tensor([500])
    x, target = bb.noisy_input_and_target(comps, z, noisy, t)
    torch.testing.assert_close(x, comps.scheduler.add_noise(z, noisy, t))
    assert torch.equal(target, noisy)


def test_flux_loads_a_local_diffusers_folder(tiny_flux, tmp_path):
    for name in flux.FLUX_SUBFOLDERS:
        getattr(tiny_flux, name).save_pretrained(tmp_path / name)
    loaded = flux.load_flux_fill({"source": "pretrained", "dtype": "float32"}, str(tmp_path))
    for name in ("transformer", "vae"):
        a, b = getattr(tiny_flux, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert not any(p.requires_grad for p in getattr(loaded, name).parameters())
    assert loaded.scheduler.config.use_dynamic_shifting and loaded.scheduler.config.max_shift == 1.15
    only_vae = flux.load_flux_fill({"source": "pretrained"}, str(tmp_path), parts=("vae",))
    assert only_vae.transformer is None and only_vae.vae is not None
    bf16 = flux.load_flux_fill({"source": "pretrained", "dtype": "bfloat16"}, str(tmp_path), parts=("vae",))
    assert bf16.vae.dtype == torch.bfloat16


def test_flux_loader_errors(tmp_path):
    with pytest.raises(ConfigError, match="paths.flux_fill"):
        flux.load_flux_fill({"source": "pretrained"}, None)
    with pytest.raises(AsukaError, match="missing transformer/config.json"):
        (tmp_path / "vae").mkdir()
        flux.load_flux_fill({"source": "pretrained"}, str(tmp_path))
    with pytest.raises(AsukaError, match="cannot load transformer"):  # HF_HUB_OFFLINE (conftest): never downloads
        flux.load_flux_fill({"source": "pretrained"}, "no-such-owner/no-such-flux-model")
    with pytest.raises(ConfigError, match="model.flux.source"):
        flux.load_flux_fill({"source": "magic"}, None)
    FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24,
                           axes_dims_rope=(4, 6, 6)).save_pretrained(tmp_path / "plain" / "transformer")
    with pytest.raises(AsukaError, match="384"):
        flux.load_flux_fill({"source": "pretrained"}, str(tmp_path / "plain"), parts=("transformer",))


def test_flux_latent_convention(tiny_flux):
    vae = tiny_flux.vae
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    z = vae.encode(image).latent_dist.mode()
    x = flux.encode_latents(vae, image, sample_mode="mode")
    torch.testing.assert_close(x, (z - 0.1159) * 0.3611)
    torch.testing.assert_close(flux.to_ae_space(vae, x), z, atol=1e-6, rtol=1e-5)
    packed = flux.pack(x)
    assert packed.shape == (2, 2 * 3, 64)
    torch.testing.assert_close(flux.unpack(packed, 32, 48, vae), x)
    ids = flux.image_ids(vae, 32, 48, "cpu", torch.float32)
    assert ids.shape == (6, 3) and ids[:, 1].tolist() == [0, 0, 0, 1, 1, 1] and ids[:, 2].tolist() == [0, 1, 2] * 2


def test_flow_matching_pair_is_the_schedulers_forward_process(tiny_flux):
    bb = get_backbone("flux_fill")
    sched = bb.inference_scheduler(tiny_flux)
    assert isinstance(sched, FlowMatchEulerDiscreteScheduler)
    flux.inference_timesteps(sched, 10, 16, "cpu")
    x0, noise = torch.randn(3, 16, 64), torch.randn(3, 16, 64)
    t = sched.timesteps[[0, 4, 9]]
    sigma = t / 1000
    x_t, target = bb.noisy_input_and_target(tiny_flux, x0, noise, sigma)
    torch.testing.assert_close(x_t, sched.scale_noise(x0, t, noise))
    torch.testing.assert_close(target, noise - x0)
    # one Euler step along the exact velocity lands on x at the next sigma
    s0, s1 = sched.sigmas[4], sched.sigmas[5]
    a, _ = flux.flow_matching_pair(x0, noise, s0.expand(3))
    b, _ = flux.flow_matching_pair(x0, noise, s1.expand(3))
    torch.testing.assert_close(a + (s1 - s0) * target, b, atol=1e-5, rtol=1e-5)
    shapes = bb.condition_shapes(tiny_flux)
    assert (shapes.token_dim, shapes.pooled_dim) == (32, 24)


def test_flux_inpaint_input(tiny_flux):
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 4:20, 8:30] = 1
    noisy = torch.randn(1, 4, 64)
    got = get_backbone("flux_fill").inpaint_input(tiny_flux, noisy, image, mask, torch.Generator().manual_seed(1))
    fill = flux.fill_condition(tiny_flux.vae, image, mask, torch.Generator().manual_seed(1))
    assert got.shape == (1, 4, 384) == (1, 4, tiny_flux.transformer.config.in_channels)
    torch.testing.assert_close(got, torch.cat([noisy, fill], dim=2))


def test_flux_conditions_round_trip(tmp_path):
    txt, vec = torch.randn(256, 8)[None], torch.randn(1, 1, 6)
    cond = flux.FluxConditions.from_tensors(txt, vec)
    assert cond.txt.shape == (1, 256, 8) and cond.vec.shape == (1, 6)
    cond.save_pretrained(tmp_path)
    back = flux.FluxConditions.from_pretrained(tmp_path)
    assert torch.equal(back.txt, txt) and torch.equal(back.vec, vec[0])
