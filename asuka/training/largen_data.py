"""LAR-Gen training samples from a quadruplet manifest (asuka.data.quadruplets): scene crop, mask, subject, text.

Every random choice comes from ``sample_rng(seed, epoch, index)``, so a sample is the same in any worker, rank or
resume. Against the copy-paste shortcut (the subject is cut from the very scene it must fill) the subject is flipped,
rotated and rescaled and the hole is often the instance's box rather than its outline. Prompt and subject are
dropped here too (for classifier-free guidance): ``caption`` becomes "" and ``subject_keep`` 0.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from asuka.data.datasets import collate
from asuka.data.images import load_image, load_mask, pil_to_tensor
from asuka.data.quadruplets import Quadruplet, load_manifest
from asuka.data.seeding import sample_rng
from asuka.models.largen.clip_image import prepare_subject
from asuka.models.largen.crop import mask_box, square_crop_box
from asuka.utils.errors import ConfigError, DataError


def drop_kind(u: float, p_text: float, p_subject: float, p_both: float) -> tuple[bool, bool]:
    """``(keep_text, keep_subject)`` from one uniform draw: text dropped with p_text, subject with p_subject, both
    with p_both (disjoint events, IP-Adapter's recipe)."""
    if u < p_text:
        return False, True
    if u < p_text + p_subject:
        return True, False
    if u < p_text + p_subject + p_both:
        return False, False
    return True, True


def augment_subject(subject: Image.Image, mask: np.ndarray, rng: np.random.Generator, aug: Any
                    ) -> tuple[Image.Image, np.ndarray]:
    """Flip, rotate (white fill) and rescale the subject and its mask together."""
    m = Image.fromarray(mask.astype(np.uint8) * 255)
    if rng.random() < float(aug.flip_prob):
        subject, m = subject.transpose(Image.FLIP_LEFT_RIGHT), m.transpose(Image.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-aug.rotate_degrees, aug.rotate_degrees))
    subject = subject.rotate(angle, Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    m = m.rotate(angle, Image.NEAREST, expand=True, fillcolor=0)
    scale = float(rng.uniform(*aug.scale))
    size = (max(1, round(subject.width * scale)), max(1, round(subject.height * scale)))
    return subject.resize(size, Image.BICUBIC), np.asarray(m.resize(size, Image.NEAREST)) >= 128


class QuadrupletDataset(torch.utils.data.Dataset):
    """``[(epoch, index)]`` -> ``{"image": [3,R,R], "mask": [1,R,R], "subject": [3,R,R] (square, white ground),
    "subject_keep": [] float, "caption": str, "index", "bad"}``; images in [-1, 1], mask 1 = hole."""

    collate = staticmethod(collate)

    def __init__(self, items: Sequence[Quadruplet], resolution: int, seed: int, data_cfg: Any,
                 max_bad: int = 50) -> None:
        if not items:
            raise DataError("the quadruplet manifest is empty")
        self.items, self.resolution, self.seed, self.cfg, self.max_bad = list(items), int(resolution), int(seed), data_cfg, max_bad

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, index: int) -> tuple[Quadruplet, Image.Image, np.ndarray, Image.Image, np.ndarray, list[str]]:
        bad: list[str] = []
        for step in range(min(self.max_bad, len(self.items))):
            q = self.items[(index + step) % len(self.items)]
            try:
                return q, load_image(q.scene), load_mask(q.mask), load_image(q.subject), load_mask(q.subject_mask), bad
            except DataError:
                bad.append(str(q.scene))
        raise DataError(f"{bad[-1]}: {len(bad)} consecutive quadruplets failed to load (from index {index})")

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = sample_rng(self.seed, epoch, index)
        cfg, r = self.cfg, self.resolution
        q, scene, mask, subject, subject_mask, bad = self._read(index)
        if mask.shape != (scene.height, scene.width):
            raise DataError(f"{q.mask}: mask {mask.shape[::-1]} and scene {scene.size} differ in size")
        box = mask_box(mask) or tuple(q.box)
        crop = square_crop_box(box, float(rng.uniform(*cfg.crop_scale)), scene.width, scene.height)
        scene = scene.crop(crop).resize((r, r), Image.BICUBIC)
        hole = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).crop(crop).resize((r, r), Image.NEAREST)) >= 128
        if rng.random() < float(cfg.box_mask_prob) and hole.any():
            x0, y0, x1, y1 = mask_box(hole)
            hole = np.zeros_like(hole)
            hole[y0:y1, x0:x1] = True
        subject, subject_mask = augment_subject(subject, subject_mask, rng, cfg.subject_aug)
        subject = prepare_subject(subject, subject_mask).resize((r, r), Image.BICUBIC)
        keep_text, keep_subject = drop_kind(float(rng.random()), *(float(cfg.drop[k]) for k in ("text", "subject", "both")))
        return {
            "image": pil_to_tensor(scene),
            "mask": torch.from_numpy(hole.astype(np.float32))[None],
            "subject": pil_to_tensor(subject),
            "subject_keep": torch.tensor(float(keep_subject)),
            "caption": q.caption if keep_text else "",
            "index": index,
            "bad": bad,
        }


def build_quadruplet_dataset(cfg: Any) -> QuadrupletDataset:
    """The manifest at ``largen.data`` (``data/largen_samples`` in the demo)."""
    root = cfg.largen.get("data")
    if not root:
        raise ConfigError("largen.data", "give the quadruplet manifest folder (scripts/make_largen_data.py writes it)")
    drop = cfg.largen.data_aug.drop
    if sum(float(drop[k]) for k in ("text", "subject", "both")) > 1:
        raise ConfigError("largen.data_aug.drop", "the three drop probabilities must sum to at most 1")
    return QuadrupletDataset(load_manifest(root), int(cfg.resolution), int(cfg.seed), cfg.largen.data_aug)
