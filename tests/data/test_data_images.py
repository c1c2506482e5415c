"""asuka.data.images: every image mode loads as RGB with the right values; broken files name themselves."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asuka.data.images import list_images, load_image, load_mask, pil_to_tensor, tensor_to_pil
from asuka.utils.errors import DataError
from data_helpers import truncate, write_image


def _rgb(path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def test_rgb_png_and_jpeg(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(_rgb(tmp_path / "a.png"), arr)
    Image.fromarray(arr).save(tmp_path / "a.jpg")
    assert _rgb(tmp_path / "a.jpg").shape == (6, 7, 3)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = _rgb(tmp_path / "g.png")
    for c in range(3):
        assert np.array_equal(out[..., c], gray)


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)   # opaque: kept
    rgba[0, 1] = (200, 100, 50, 0)     # transparent: black
    rgba[1, 0] = (200, 100, 50, 128)   # half: about half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = _rgb(tmp_path / "a.png").astype(int)
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[0, 1]) == (0, 0, 0)
    assert np.all(np.abs(out[1, 0] - np.array([100, 50, 25])) <= 1)

    la = np.stack([np.full((2, 2), 90, np.uint8), np.array([[255, 0], [255, 0]], np.uint8)], -1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = _rgb(tmp_path / "la.png")
    assert tuple(out[0, 0]) == (90, 90, 90) and tuple(out[0, 1]) == (0, 0, 0)


def test_palette_image(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert _rgb(tmp_path / "p.png").tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 128]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode in ("I;16", "I")
    out = _rgb(tmp_path / "d.png")
    assert out[..., 0].tolist() == [[0, 100, 255, 128]]
    assert np.array_equal(out[..., 0], out[..., 2])
    assert load_mask(tmp_path / "d.png").tolist() == [[False, False, True, True]]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    out = _rgb(tmp_path / "c.jpg")
    assert out.shape == (4, 4, 3) and out.min() > 240  # no ink = white


def test_truncated_and_missing_files_name_themselves(tmp_path):
    bad = truncate(write_image(tmp_path / "broken.png", size=(64, 64)))
    with pytest.raises(DataError) as err:
        load_image(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png"):
        load_mask(tmp_path / "text.png")


def test_load_mask_threshold_and_modes(tmp_path):
    Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8), mode="L").save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    mask = load_mask(tmp_path / "rgb.png")
    assert mask.dtype == bool and mask.tolist() == [[False, True]]
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "one.png")
    assert load_mask(tmp_path / "one.png").tolist() == [[True, False]]


def test_tensor_round_trip():
    arr = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    t = pil_to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 5, 6) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(t)), arr)
    assert np.array_equal(np.asarray(tensor_to_pil(t[None])), arr)
    assert torch.allclose(pil_to_tensor(Image.new("RGB", (1, 1), (0, 0, 0))), torch.full((3, 1, 1), -1.0))
    assert torch.allclose(pil_to_tensor(Image.new("RGB", (1, 1), (255, 255, 255))), torch.ones(3, 1, 1))
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))


def test_pil_to_tensor_bit_exact():
    """Every byte value gives exactly float32 ``u / 127.5 - 1`` (training samples must not change between versions)."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    arr = np.stack([values, values[::-1], values.T], axis=-1)
    expected = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
    assert torch.equal(pil_to_tensor(Image.fromarray(arr)), expected)
    assert torch.equal(pil_to_tensor(Image.fromarray(values)), expected[:1].expand(3, -1, -1))


def test_list_images_recursive_sorted_filtered(tmp_path):
    for rel in ("b/2.jpg", "a/1.PNG", "c.webp", "d.bmp", "e.jpeg", "notes.txt", ".hidden/x.png", "masks/m.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, exclude=[tmp_path / "masks"])]
    assert found == ["a/1.PNG", "b/2.jpg", "c.webp", "d.bmp", "e.jpeg"]


def test_exif_orientation_is_applied_wherever_images_are_read(tmp_path):
    """A phone JPEG stored in sensor orientation with EXIF orientation 6 (turn 90 degrees clockwise to display):
    load_image, image_size, read_image_header and the GPU-decode path all see the displayed image."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from asuka.data.device_images import _decode
    from asuka.data.images import image_size, read_image_header

    rng = np.random.default_rng(0)
    sensor = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(sensor).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:  # PIL without the orientation: the stored pixels
        stored = np.asarray(raw.convert("RGB"))
    displayed = np.rot90(stored, k=-1)  # orientation 6: rotate 90 degrees clockwise
    assert np.array_equal(np.asarray(load_image(path)), displayed)
    assert image_size(path) == (20, 40) and read_image_header(path)[1] == (20, 40)
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    plain = decode_jpeg(data, mode=ImageReadMode.RGB)
    (upright,) = _decode([data], torch.device("cpu"))
    assert torch.equal(upright, torch.rot90(plain, k=-1, dims=(1, 2)))
