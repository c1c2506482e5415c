"""scripts/convert_largen.py on a tiny file in the released ``largen_ckpt_s22k.pth`` layout: scepter's SGM UNet names
(written here by the SGM rules, independently of diffusers' converter), ``to_k_ip``/``to_v_ip`` in each ``attn2``,
the IP-Adapter-Plus resampler at ``conditioner.embedders.5.image_proj_model``, plus the parts that are dropped."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import compose_config  # noqa: E402

from asuka.models.backbones.sdxl import build_tiny_sdxl  # noqa: E402
from asuka.models.largen.assign import AssignAdapter  # noqa: E402
from asuka.models.largen.released import convert_largen  # noqa: E402
from asuka.utils.errors import AsukaError  # noqa: E402

LAYERS = 1  # layers_per_block of the tiny SDXL UNet
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
       "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
       "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def sgm_name(key: str, up_attention: set[int]) -> str:
    """A diffusers UNet key -> its SGM (scepter/ldm) name, by the SGM block numbering."""
    for ours, theirs in TOP.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours):]
    resnet = lambda rest: RESNET.get(rest.split(".")[0], rest.split(".")[0]) + rest[len(rest.split(".")[0]):]  # noqa
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + level * (LAYERS + 1) + j
        return f"input_blocks.{index}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * (LAYERS + 1) + LAYERS}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        index = int(m[1]) * (LAYERS + 1) + int(m[3])
        return f"output_blocks.{index}.0.{resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{index}.1.{m[4]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        level = int(m[1])
        return f"output_blocks.{level * (LAYERS + 1) + LAYERS}.{2 if level in up_attention else 1}.conv.{m[2]}"
    raise AssertionError(f"no SGM rule for {key}")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(file, tiny UNet, adapter): the UNet and adapter written in the released layout."""
    unet = build_tiny_sdxl().unet
    torch.manual_seed(1)
    assign = AssignAdapter.from_unet(unet, image_embed_dim=32, resampler_dim=32, depth=4, dim_head=64, heads=1,
                                     num_tokens=4, ffn_ratio=4)
    for p in assign.parameters():  # not the to_k/to_v copies from_unet starts with
        p.data.normal_()
    up_attention = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    state = {f"model.{sgm_name(k, up_attention)}": v for k, v in unet.state_dict().items()}
    for name, k, v in zip(assign.config.layer_names, assign.to_k_ip, assign.to_v_ip):
        sgm = sgm_name(name + ".to_k.weight", up_attention).removesuffix(".to_k.weight")
        state[f"model.{sgm}.to_k_ip.weight"], state[f"model.{sgm}.to_v_ip.weight"] = k.weight, v.weight
    for key, value in assign.to_ip_adapter_state_dict()["image_proj"].items():
        state[f"conditioner.embedders.5.image_proj_model.{key}"] = value
    state["conditioner.embedders.5.patch_projector.weight"] = torch.randn(32, 32)  # unused: USE_REFINE False
    state["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.ones(16)
    state["first_stage_model.decoder.conv_out.weight"] = torch.randn(3, 8, 3, 3)
    path = tmp_path_factory.mktemp("released") / "largen_ckpt_s22k.pth"
    torch.save({k: v.detach().clone() for k, v in state.items()}, path)
    return path, unet, assign


def convert(src: Path, out: Path) -> dict:
    cfg = compose_config("convert_largen", ["model=sdxl_tiny", f"src={src}", f"out={out}"])
    return json.loads(convert_largen(cfg).read_text())


def test_released_layout_converts_to_the_same_weights(released, tmp_path):
    from diffusers import UNet2DConditionModel

    src, unet, assign = released
    report = convert(src, tmp_path / "out")
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "out" / "unet")
    a, b = unet.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    got = AssignAdapter.from_pretrained(tmp_path / "out" / "assign")
    a, b = assign.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert report["ip_layers"] == len(assign.config.layer_names) and len(report["sha256"]) == 64
    assert sorted(report["dropped"]) == ["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                                         "conditioner.embedders.5.patch_projector.weight",
                                         "first_stage_model.decoder.conv_out.weight"]
    from asuka.pipelines.largen_build import build_largen_pipeline  # the folders are what LAR-Gen takes

    pipe = build_largen_pipeline(compose_config("eval", ["experiment=demo", "method=largen", "model=sdxl_tiny",
                                                         f"largen.unet={tmp_path / 'out' / 'unet'}",
                                                         f"largen.assign={tmp_path / 'out' / 'assign'}"]))
    assert torch.equal(pipe.assign.to_k_ip[0].weight, assign.to_k_ip[0].weight)
    assert torch.equal(pipe.unet.conv_in.weight, unet.conv_in.weight)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"ema.decay": torch.zeros(())}), "unknown key 'ema.decay'"),
    (lambda s: s.pop("model.out.2.bias"), "missing keys for the SDXL LAR-Gen UNet: conv_out.bias"),
    (lambda s: s.pop("model.label_emb.0.2.bias"), "missing UNet key model.label_emb.0.2.bias"),
    (lambda s: s.update({"model.extra.weight": torch.zeros(1)}), "1 UNet keys have no diffusers name"),
    (lambda s: s.update({"model.out.2.bias": torch.zeros(5)}), "'conv_out.bias' has shape"),
    (lambda s: s.pop(next(k for k in s if k.endswith("to_v_ip.weight"))), "to_k_ip/to_v_ip for"),
])
def test_bad_files_are_refused_in_one_line(released, tmp_path, edit, message):
    state = torch.load(released[0], weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(AsukaError, match=re.escape(message)):
        convert(tmp_path / "bad.pth", tmp_path / "out")


def test_both_stages_start_from_converted_weights_on_sdxl_and_stage_a_resumes_exactly(released, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    from resume_check import assert_resume_exact

    from asuka.training.largen import AssignStage, RefineStage

    src, unet, assign = released
    convert(src, tmp_path / "out")
    overrides = ["experiment=demo", "model=sdxl_tiny", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                 "trainer.val_every=100", "trainer.batch_size=2", f"largen.unet={tmp_path / 'out' / 'unet'}",
                 f"largen.assign={tmp_path / 'out' / 'assign'}"]
    cfg = compose_config("train_largen", overrides)
    stage = AssignStage(cfg, torch.device("cpu"), torch.float32)
    net = stage.trainable["largen"]
    assert torch.equal(net.unet.conv_in.weight, unet.conv_in.weight)
    assert torch.equal(net.assign.to_v_ip[-1].weight, assign.to_v_ip[-1].weight)
    assert_resume_exact(cfg, AssignStage, "assign", tmp_path / "runs", stop_at=2)
    # stage B (our RefineNet: none was released) on the converted release, frozen; the RefineNet a copy of its UNet
    refine_stage = RefineStage(compose_config("train_largen", [*overrides, "largen.stage=refine"]),
                               torch.device("cpu"), torch.float32)
    refine = refine_stage.trainable["refine"].unet
    assert torch.equal(refine_stage.net.assign.to_k_ip[0].weight, assign.to_k_ip[0].weight)
    assert torch.equal(refine.conv_in.weight, unet.conv_in.weight[:, :4])
    assert torch.equal(refine.add_embedding.linear_1.weight, unet.add_embedding.linear_1.weight)
