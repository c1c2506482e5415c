"""Released MAE weights -> MaskedAutoencoderViT: key/shape table, value placement, refusals, the convert script.

Released key names and shapes (facebookresearch/mae ``models_mae.py`` with ``mae_vit_base_patch16_dec512d8b``;
ewrfcas/MAE-FAR and Yikai-Wang/asuka-misato ``MAE/models_mae.py`` ``MaskedAutoencoderViTFinetune``, loaded from
``checkpoint['model']``):

| key                                   | official MAE ViT-B/16 (224 px) | MAE-FAR / ASUKA mae_300 (256 px) |
|---------------------------------------|--------------------------------|----------------------------------|
| cls_token                             | [1, 1, 768]                    | absent                           |
| pos_embed                             | [1, 197, 768] (row 0 = cls)    | [1, 256, 768]                    |
| patch_embed.proj.weight / .bias       | [768, 3, 16, 16] / [768]       | same                             |
| blocks.{0..11}.norm1/.norm2 w, b      | [768]                          | same                             |
| blocks.{0..11}.attn.qkv.weight / bias | [2304, 768] / [2304]           | same                             |
| blocks.{0..11}.attn.proj.weight / bias| [768, 768] / [768]             | same                             |
| blocks.{0..11}.mlp.fc1.weight / bias  | [3072, 768] / [3072]           | same                             |
| blocks.{0..11}.mlp.fc2.weight / bias  | [768, 3072] / [768]            | same                             |
| norm.weight / .bias                   | [768]                          | same                             |
| decoder_embed.weight / .bias          | [512, 768] / [512]             | same                             |
| mask_token                            | [1, 1, 512]                    | same                             |
| decoder_pos_embed                     | [1, 197, 512] (row 0 = cls)    | [1, 256, 512]                    |
| decoder_blocks.{0..7}.* (as blocks)   | qkv [1536, 512], proj [512, 512], fc1 [2048, 512], fc2 [512, 2048] | same |
| decoder_norm.weight / .bias           | [512]                          | same                             |
| decoder_pred.weight / .bias           | [768, 512] / [768]             | same                             |
| decoder_patch_embed.proj.weight / bias| absent                         | [512, 4, 16, 16] / [512]         |
| alpha                                 | absent                         | [] (scalar, init 1)              |
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.mae_blocks import sincos_pos_embed_2d
from asuka.models.mae_import import (
    NEW_KEYS,
    convert_mae,
    convert_released_state_dict,
    detect_layout,
    load_mae,
)
from asuka.utils.errors import AsukaError, ConfigError

REPO = Path(__file__).resolve().parents[2]


def released_table(
    embed: int, depth: int, dec: int, dec_depth: int, mlp_ratio: float, patch: int, grid: int, official: bool
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a released checkpoint (official MAE if ``official`` else MAE-FAR finetune), as tabled above."""
    tokens = grid * grid + (1 if official else 0)
    t: dict[str, tuple[int, ...]] = {}
    if official:
        t["cls_token"] = (1, 1, embed)
    t["pos_embed"] = (1, tokens, embed)
    t["patch_embed.proj.weight"] = (embed, 3, patch, patch)
    t["patch_embed.proj.bias"] = (embed,)

    def blocks(prefix: str, n: int, d: int) -> None:
        h = int(d * mlp_ratio)
        for i in range(n):
            p = f"{prefix}.{i}."
            t.update({
                p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
                p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                p + "mlp.fc1.weight": (h, d), p + "mlp.fc1.bias": (h,),
                p + "mlp.fc2.weight": (d, h), p + "mlp.fc2.bias": (d,),
            })

    blocks("blocks", depth, embed)
    t["norm.weight"] = t["norm.bias"] = (embed,)
    t["decoder_embed.weight"] = (dec, embed)
    t["decoder_embed.bias"] = (dec,)
    t["mask_token"] = (1, 1, dec)
    t["decoder_pos_embed"] = (1, tokens, dec)
    blocks("decoder_blocks", dec_depth, dec)
    t["decoder_norm.weight"] = t["decoder_norm.bias"] = (dec,)
    t["decoder_pred.weight"] = (patch * patch * 3, dec)
    t["decoder_pred.bias"] = (patch * patch * 3,)
    if not official:
        t["decoder_patch_embed.proj.weight"] = (dec, 4, patch, patch)
        t["decoder_patch_embed.proj.bias"] = (dec,)
        t["alpha"] = ()
    return t


VIT_B = dict(embed=768, depth=12, dec=512, dec_depth=8, mlp_ratio=4.0, patch=16)


@pytest.fixture(scope="module")
def tiny_cfg() -> dict:
    return OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "model" / "tiny.yaml").mae)


def _tiny_table(tiny_cfg: dict, official: bool, grid: int | None = None) -> dict[str, tuple[int, ...]]:
    return released_table(
        tiny_cfg["embed_dim"], tiny_cfg["depth"], tiny_cfg["decoder_embed_dim"], tiny_cfg["decoder_depth"],
        tiny_cfg["mlp_ratio"], tiny_cfg["patch_size"], grid or tiny_cfg["img_size"] // tiny_cfg["patch_size"], official,
    )


def _random_state(table: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) for k, shape in table.items()}


def _official_pos(sd: dict, grid: int) -> None:
    """Released official files hold sin-cos tables with a zero class row."""
    for key in ("pos_embed", "decoder_pos_embed"):
        d = sd[key].shape[-1]
        sd[key] = torch.cat([torch.zeros(1, d), sincos_pos_embed_2d(d, grid)])[None]


def test_vit_b_table_spot_values():
    t = released_table(**VIT_B, grid=14, official=True)
    assert t["pos_embed"] == (1, 197, 768) and t["decoder_pos_embed"] == (1, 197, 512)
    assert t["blocks.11.attn.qkv.weight"] == (2304, 768) and t["blocks.0.mlp.fc1.weight"] == (3072, 768)
    assert t["decoder_blocks.7.mlp.fc2.weight"] == (512, 2048) and t["decoder_pred.weight"] == (768, 512)
    assert len([k for k in t if k.startswith("blocks.")]) == 12 * 12


def test_paper_model_has_the_released_finetune_layout():
    with torch.device("meta"):
        model = MaskedAutoencoderViT()  # paper defaults: ViT-B/16 at 256 px
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == released_table(**VIT_B, grid=16, official=False)


def test_convert_official_vit_b_layout():
    table = released_table(**VIT_B, grid=14, official=True)
    state = {"model": {k: torch.empty(s, device="meta") for k, s in table.items()}}
    assert detect_layout(state) == "official-mae"
    conv = convert_released_state_dict(state)
    with torch.device("meta"):
        model = MaskedAutoencoderViT()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert "cls_token" not in conv
    assert set(ours) - set(conv) == set(NEW_KEYS)
    assert conv["pos_embed"].shape == (1, 196, 768)  # class row dropped; 14x14 grid, recomputed for 16x16 on load
    for k, v in conv.items():
        if k not in ("pos_embed", "decoder_pos_embed"):
            assert tuple(v.shape) == ours[k], k


def test_load_official_layout_values_land(tiny_cfg, tmp_path, caplog):
    grid = tiny_cfg["img_size"] // tiny_cfg["patch_size"]
    sd = _random_state(_tiny_table(tiny_cfg, official=True))
    _official_pos(sd, grid)
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": sd, "epoch": 3, "args": argparse.Namespace(lr=1e-3, model="mae_vit_base_patch16")}, path)
    with caplog.at_level(logging.WARNING):
        model = load_mae(path, tiny_cfg)
    msd = model.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias", "norm.weight", "decoder_embed.weight",
                "mask_token", "decoder_blocks.3.norm1.bias", "decoder_norm.weight", "decoder_pred.weight",
                "patch_embed.proj.weight"):
        assert torch.equal(msd[key], sd[key]), key
    assert torch.allclose(model.pos_embed[0], sincos_pos_embed_2d(tiny_cfg["embed_dim"], grid))
    assert torch.equal(model.alpha, torch.tensor(1.0))  # fresh init
    assert "decoder_patch_embed.proj.weight" in caplog.text and "alpha" in caplog.text
    assert not model.training


def test_load_other_grid_recomputes_pos_embed(tiny_cfg, tmp_path):
    sd = _random_state(_tiny_table(tiny_cfg, official=True, grid=3))  # e.g. a 224-px file for a 256-px model
    path = tmp_path / "other_grid.pth"
    torch.save({"model": sd}, path)
    model = load_mae(path, tiny_cfg)
    grid = tiny_cfg["img_size"] // tiny_cfg["patch_size"]
    assert torch.allclose(model.decoder_pos_embed[0], sincos_pos_embed_2d(tiny_cfg["decoder_embed_dim"], grid))


def test_load_mae_far_layout_with_alpha(tiny_cfg, tmp_path, caplog):
    sd = _random_state(_tiny_table(tiny_cfg, official=False), seed=1)
    sd["alpha"] = torch.tensor(0.3)
    sd["pos_embed"] = sincos_pos_embed_2d(tiny_cfg["embed_dim"], 4)[None]
    sd["decoder_pos_embed"] = sincos_pos_embed_2d(tiny_cfg["decoder_embed_dim"], 4)[None]
    assert detect_layout({"model": sd}) == "mae-far"
    path = tmp_path / "mae_300.pth"
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299}, path)
    with caplog.at_level(logging.WARNING):
        model = load_mae(path, tiny_cfg)
    assert torch.allclose(model.alpha, torch.tensor(0.3))
    assert torch.equal(model.decoder_patch_embed.proj.weight, sd["decoder_patch_embed.proj.weight"])
    assert "initialised fresh" not in caplog.text and "differs" not in caplog.text


def test_load_flat_safetensors(tiny_cfg, tmp_path):
    from safetensors.torch import save_file

    sd = _random_state(_tiny_table(tiny_cfg, official=False), seed=2)
    path = tmp_path / "flat.safetensors"
    save_file(sd, str(path))
    model = load_mae(path, tiny_cfg)
    assert torch.equal(model.blocks[1].attn.proj.weight, sd["blocks.1.attn.proj.weight"])


def test_unexpected_keys_are_reported(tiny_cfg, tmp_path, caplog):
    sd = _random_state(_tiny_table(tiny_cfg, official=False))
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save({"model": sd}, path)
    with caplog.at_level(logging.WARNING):
        load_mae(path, tiny_cfg)
    assert "head.weight" in caplog.text


def test_wrong_shape_names_key_shapes_and_file(tiny_cfg, tmp_path):
    sd = _random_state(_tiny_table(tiny_cfg, official=False))
    sd["blocks.1.attn.qkv.weight"] = torch.zeros(5, 7)
    path = tmp_path / "bad_shape.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(AsukaError) as err:
        load_mae(path, tiny_cfg)
    msg = str(err.value)
    assert "blocks.1.attn.qkv.weight" in msg and "(5, 7)" in msg and str(path) in msg
    assert str((3 * tiny_cfg["embed_dim"], tiny_cfg["embed_dim"])) in msg


def test_encoder_only_checkpoint_is_refused(tiny_cfg, tmp_path):
    sd = {k: v for k, v in _random_state(_tiny_table(tiny_cfg, official=True)).items()
          if not k.startswith("decoder") and k != "mask_token"}
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(AsukaError, match="lacks essential keys: mask_token, decoder_embed.weight.*encoder-only"):
        load_mae(path, tiny_cfg)


class _Payload:
    """Unpickling this would create a file: the loader must refuse before that."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (Path(self.flag),))


def test_custom_class_pickle_is_refused(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("ASUKA_TRUST_PICKLE", raising=False)
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"alpha": torch.tensor(1.0)}, "payload": _Payload(str(flag))}, path)
    with pytest.raises(AsukaError, match="refusing to unpickle"):
        load_mae(path, tiny_cfg)
    assert not flag.exists()


def test_folder_roundtrip_and_config_check(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(**tiny_cfg)
    model.save_pretrained(tmp_path / "mae")
    loaded = load_mae(tmp_path / "mae", tiny_cfg)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="embed_dim"):
        load_mae(tmp_path / "mae", {**tiny_cfg, "embed_dim": 64})
    with pytest.raises(AsukaError, match="config.json"):
        load_mae(tmp_path, tiny_cfg)


def test_missing_file_and_unknown_config_key(tiny_cfg, tmp_path):
    with pytest.raises(AsukaError, match="not found"):
        load_mae(tmp_path / "nope.pth", tiny_cfg)
    sd = _random_state(_tiny_table(tiny_cfg, official=False))
    path = tmp_path / "ok.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(ConfigError, match="model.mae.bogus"):
        load_mae(path, {**tiny_cfg, "bogus": 1})


def test_convert_mae_requires_src(tmp_path):
    cfg = OmegaConf.create({"src": "???", "out": str(tmp_path / "o"), "model": {"mae": {}}})
    with pytest.raises(ConfigError, match="src"):
        convert_mae(cfg)


def test_convert_script_writes_a_loadable_folder(tiny_cfg, tmp_path):
    sd = _random_state(_tiny_table(tiny_cfg, official=True), seed=4)
    _official_pos(sd, tiny_cfg["img_size"] // tiny_cfg["patch_size"])
    src = tmp_path / "released.pth"
    torch.save({"model": sd}, src)
    out = tmp_path / "converted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("ASUKA_TRUST_PICKLE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_mae.py"), f"src={src}", f"out={out}", "model=tiny"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").is_file()
    model = MaskedAutoencoderViT.from_pretrained(out)
    assert model.config.embed_dim == tiny_cfg["embed_dim"]
    assert torch.equal(model.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])

    bad = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_mae.py"), f"src={tmp_path / 'missing.pth'}", f"out={out}",
         "model=tiny"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "error:" in bad.stderr and "missing.pth" in bad.stderr
