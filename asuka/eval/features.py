"""Inception pool features (2048-d), computed once per image set and shared by FID and U-IDS/P-IDS.

Two variants, recorded in every result because their numbers are not comparable:

- ``tf_inception``: torch-fidelity's ``inception-v3-compat`` network (the TF-FID Inception of MAT/Co-Mod/LaMa),
  fed uint8 images that it resizes itself with TF1-compatible bilinear interpolation to 299.
- ``asuka_official``: torchvision ``inception_v3`` with the IMAGENET1K_V1 weights and ``fc = Identity``, fed
  through ``Inception_V3_Weights.DEFAULT.transforms()`` (resize 342, centre crop 299, ImageNet normalisation), as
  the official ASUKA scripts (``asuka-flux/eval/cal_ids.py``) do.

Weights are never downloaded: they are read from ``paths.inception`` or the standard torch cache folder
(``$TORCH_HOME/hub/checkpoints``), and a missing file is an AsukaError that says what to put where. ``random``
weights (kaiming init, seeded) exercise the plumbing offline; every result then says so.

Features are cached on disk as ``<key>.npy`` + ``<key>.json``. The key hashes the content of the image set (file
bytes or uint8 arrays), the variant, the weights' sha256 (or the random seed), the resolution and the resize mode.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asuka.utils.errors import AsukaError
from asuka.utils.safe_load import load_state_dict
from asuka.utils.weights import file_sha256, resolve_weights_file

VARIANTS = ("tf_inception", "asuka_official")
FEATURE_DIM = 2048
# Bump when the way images reach the network changes, so stale cache entries are not reused.
FEATURE_VERSION = 1

_STANDARD_WEIGHTS = {
    # variant: (standard file name in $TORCH_HOME/hub/checkpoints, where it comes from)
    "tf_inception": ("weights-inception-2015-12-05-6726825d.pth",
                     "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                     "weights-inception-2015-12-05-6726825d.pth"),
    "asuka_official": ("inception_v3_google-0cc3c7bd.pth",
                       "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"),
}
_RESIZE_MODES = {
    "tf_inception": "torch-fidelity tf1-bilinear to 299x299 (uint8 input)",
    "asuka_official": "PIL bilinear antialiased resize 342 + centre crop 299, ImageNet normalisation",
}
RANDOM_HINT = ". metrics.weights=random runs the evaluation with random weights (a plumbing check, not a metric)"
_RANDOM_MARKER = "__asuka_random_init_seed__"


def inception_weights_file(variant: str, weights_path: str | os.PathLike | None = None) -> Path:
    """The local Inception weights of ``variant``: ``paths.inception`` or the standard file in the torch cache."""
    name, url = _STANDARD_WEIGHTS[variant]
    return resolve_weights_file(weights_path, name, url, f"Inception ({variant})", "paths.inception",
                                hint=RANDOM_HINT)


def kaiming_init_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded kaiming init of convs/linears and identity batch norms.

    PyTorch's default init shrinks activations through Inception's depth (pool features ~1e-8, FID exactly 0);
    fan-in kaiming keeps them O(1), so random-weight features still separate different images.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=gen)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return module


def _tf_inception_class() -> type:
    """torch-fidelity's extractor, with its weights handed in as a dict (its own loader downloads or unpickles)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _CompatInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D102  (called by its __init__)
            if _RANDOM_MARKER in state_dict:
                kaiming_init_(self, int(state_dict[_RANDOM_MARKER]))
                return None
            return super().load_state_dict(state_dict, strict=strict, assign=assign)

    return _CompatInception


def _load_checked(module: nn.Module, state_dict: dict, path: Path, variant: str) -> None:
    """Strict load; a file for the other variant (or another network) becomes a one-line AsukaError."""
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise AsukaError(f"{path}: not the Inception weights of metrics.variant={variant} ({first})") from None


class InceptionFeatures(nn.Module):
    """uint8 images ``[B, 3, H, W]`` -> float32 pool features ``[B, 2048]`` on the CPU, in eval mode.

    Eval mode (fixed batch-norm statistics, no dropout) makes each image's features independent of the batch it
    is in, so cached features do not depend on the batch size that computed them.
    """

    def __init__(self, variant: str, weights: str = "pretrained", weights_path: str | os.PathLike | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise AsukaError(f"metrics.variant={variant}: expected one of {', '.join(VARIANTS)}")
        if weights not in ("pretrained", "random"):
            raise AsukaError(f"metrics.weights={weights}: expected pretrained or random")
        self.variant = variant
        self.weights = weights
        self.seed = int(seed)
        self.resize_mode = _RESIZE_MODES[variant]
        self.weights_file: str | None = None
        self.weights_sha256 = "random"
        state_dict = None
        if weights == "pretrained":
            path = inception_weights_file(variant, weights_path)
            state_dict = load_state_dict(path)
            self.weights_file = str(path)
            self.weights_sha256 = file_sha256(path)

        if variant == "tf_inception":
            payload = state_dict if state_dict is not None else {_RANDOM_MARKER: torch.tensor(self.seed)}
            buf = io.BytesIO()
            torch.save(payload, buf)
            buf.seek(0)
            try:
                self.net = _tf_inception_class()("inception-v3-compat", ["2048"], feature_extractor_weights_path=buf)
            except RuntimeError as exc:
                if state_dict is None:
                    raise
                first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
                raise AsukaError(f"{self.weights_file}: not the Inception weights of "
                                 f"metrics.variant={variant} ({first})") from None
            self._preprocess = None
        else:
            from torchvision.models import Inception_V3_Weights, inception_v3

            # transform_input=True is what inception_v3(weights=IMAGENET1K_V1) sets in the official script.
            net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
            if state_dict is None:
                kaiming_init_(net, self.seed)
            else:
                _load_checked(net, state_dict, Path(self.weights_file), variant)
            net.fc = nn.Identity()
            self.net = net
            self._preprocess = Inception_V3_Weights.DEFAULT.transforms()
        self.net.requires_grad_(False)
        self.eval()

    def describe(self) -> dict:
        """What produced these features, for result files and cache keys."""
        return {"variant": self.variant, "weights": self.weights, "weights_file": self.weights_file,
                "weights_sha256": self.weights_sha256, "resize_mode": self.resize_mode,
                "random_seed": self.seed if self.weights == "random" else None}

    def train(self, mode: bool = True) -> "InceptionFeatures":
        """Always stays in eval mode: batch-dependent statistics would make features depend on the batch."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and images.shape[1] == 3):
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {getattr(images, 'dtype', type(images))} "
                             f"{tuple(getattr(images, 'shape', ()))}")
        device = next(self.net.parameters()).device
        if self.variant == "tf_inception":
            (feats,) = self.net(images.to(device))
        else:
            from PIL import Image

            batch = torch.stack([self._preprocess(Image.fromarray(img.permute(1, 2, 0).cpu().numpy()))
                                 for img in images])
            feats = self.net(batch.to(device))
        return feats.float().cpu()


def build_inception(variant: str, weights: str = "pretrained", weights_path: str | os.PathLike | None = None,
                    device: str | torch.device = "cpu", seed: int = 0) -> InceptionFeatures:
    """The feature extractor for ``metrics.variant`` / ``metrics.weights`` on ``device``."""
    return InceptionFeatures(variant, weights, weights_path, seed).to(device)


# ---------------------------------------------------------------------------------------------------------------
# content hashes and the on-disk cache


def hash_files(rows: Iterable[Sequence[str | os.PathLike]], extra: dict | None = None) -> str:
    """sha256 over the bytes of every file of every row, in order (cheap: no decoding).

    A row is the files one image is made from (e.g. ground truth, mask, prediction); ``extra`` adds settings that
    change the pixels (compositing on/off). The order is part of the hash, as features are stored in that order.
    """
    h = hashlib.sha256()
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    for row in rows:
        h.update(b"\x00row")
        for path in row:
            data = Path(path).read_bytes()
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def hash_arrays(arrays: Iterable[np.ndarray | torch.Tensor], extra: dict | None = None) -> str:
    """sha256 over uint8 image arrays (shape included), for image sets that exist only in memory."""
    h = hashlib.sha256()
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    for arr in arrays:
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().cpu().numpy()
        arr = np.ascontiguousarray(arr)
        if arr.dtype != np.uint8:
            raise ValueError(f"hash_arrays: expected uint8 arrays, got {arr.dtype}")
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def cache_key(content_hash: str, extractor: InceptionFeatures, resolution: int) -> tuple[str, dict]:
    """The cache key of a set's features and the metadata it is derived from (stored next to the features)."""
    desc = extractor.describe()
    meta = {"content_hash": content_hash, "variant": desc["variant"], "weights": desc["weights"],
            "weights_sha256": desc["weights_sha256"], "random_seed": desc["random_seed"],
            "resolution": int(resolution), "resize_mode": desc["resize_mode"], "feature_dim": FEATURE_DIM,
            "feature_version": FEATURE_VERSION}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:32]
    return key, meta


def load_cached(cache_dir: str | os.PathLike | None, key: str, count: int) -> np.ndarray | None:
    """Cached features ``[count, 2048]`` for ``key``, or None (no cache, no entry, or an entry that does not fit)."""
    if cache_dir is None:
        return None
    meta_path, npy_path = Path(cache_dir) / f"{key}.json", Path(cache_dir) / f"{key}.npy"
    if not (meta_path.is_file() and npy_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        feats = np.load(npy_path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if meta.get("count") != count or feats.shape != (count, FEATURE_DIM):
        return None
    return feats


def save_cached(cache_dir: str | os.PathLike | None, key: str, feats: np.ndarray, meta: dict) -> None:
    """Write ``<key>.npy`` then ``<key>.json`` atomically (the json marks a complete entry)."""
    if cache_dir is None:
        return
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = f".tmp{os.getpid()}"
    tmp_npy = cache_dir / f"{key}{tag}.npy"
    np.save(tmp_npy, np.asarray(feats, dtype=np.float32), allow_pickle=False)
    os.replace(tmp_npy, cache_dir / f"{key}.npy")
    full = dict(meta, key=key, count=int(len(feats)), created=time.strftime("%Y-%m-%d %H:%M:%S"),
                torch=torch.__version__)
    tmp_json = cache_dir / f"{key}{tag}.json"
    tmp_json.write_text(json.dumps(full, indent=1, sort_keys=True))
    os.replace(tmp_json, cache_dir / f"{key}.json")


class FeatureSet:
    """The features of one image set: read from the cache, or accumulated batch by batch and then cached.

    Lets one pass over the data feed several sets (ground truth and composites) while skipping the network for
    any set whose features are already cached.
    """

    def __init__(self, extractor: InceptionFeatures, content_hash: str, resolution: int, count: int,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.extractor = extractor
        self.count = int(count)
        self.cache_dir = cache_dir
        self.key, self.meta = cache_key(content_hash, extractor, resolution)
        self._cached = load_cached(cache_dir, self.key, self.count)
        self.hit = self._cached is not None   # the features come from the cache; the extractor is not run
        self._parts: list[np.ndarray] = []

    def add(self, images: torch.Tensor) -> None:
        """Feed the next uint8 batch ``[B, 3, H, W]`` (ignored on a cache hit)."""
        if self._cached is None:
            self._parts.append(self.extractor(images).numpy())

    def result(self) -> np.ndarray:
        """All features ``[count, 2048]`` (float32), saved to the cache when they were computed."""
        if self._cached is not None:
            return self._cached
        feats = np.concatenate(self._parts) if self._parts else np.zeros((0, FEATURE_DIM), np.float32)
        if len(feats) != self.count:
            raise RuntimeError(f"feature set got {len(feats)} images, expected {self.count}")
        save_cached(self.cache_dir, self.key, feats, self.meta)
        self._cached = feats
        return feats


def extract_features(extractor: InceptionFeatures, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Features of an iterable of uint8 batches, uncached."""
    parts = [extractor(b).numpy() for b in batches]
    return np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM), np.float32)
