"""LPIPS v0.1 that never downloads: linear heads from the lpips wheel, the trunk from a local torchvision file.

Used by the evaluation (AlexNet, the official metric) and by the stage-3 reconstruction loss (VGG).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from asuka.utils.errors import AsukaError
from asuka.utils.safe_load import load_state_dict
from asuka.utils.weights import file_sha256, resolve_weights_file

# torchvision's standard trunk file names ($TORCH_HOME/hub/checkpoints), which lpips would otherwise download.
LPIPS_TRUNKS = {
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}


def _check_net(net: str) -> None:
    if net not in LPIPS_TRUNKS:
        raise AsukaError(f"LPIPS net '{net}': expected one of {', '.join(LPIPS_TRUNKS)}")


def lpips_trunk_file(net: str, lpips_dir: str | Path | None = None) -> Path:
    """The local torchvision trunk of LPIPS ``net``: in ``paths.lpips_dir`` or the torch cache."""
    _check_net(net)
    name, url = LPIPS_TRUNKS[net]
    return resolve_weights_file(lpips_dir, name, url, f"LPIPS {net} trunk", "paths.lpips_dir")


def build_lpips(
    net: str = "alex",
    weights: str = "pretrained",
    lpips_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[torch.nn.Module, dict]:
    """A frozen ``lpips.LPIPS`` and a description of its weights for result files.

    ``weights="random"`` keeps a seeded random trunk (offline tests and the demo: then LPIPS is not a perceptual
    distance). A missing trunk file is an AsukaError naming it.
    """
    import lpips

    _check_net(net)
    if weights not in ("pretrained", "random"):
        raise AsukaError(f"LPIPS weights '{weights}': expected pretrained or random")
    path = lpips_trunk_file(net, lpips_dir) if weights == "pretrained" else None
    # The random trunk (pnet_rand) is drawn from the global generator: seed it without disturbing the caller's.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.simplefilter("ignore")  # torchvision's deprecation notes about lpips' `pretrained=` argument
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    info = {"net": net, "version": "0.1", "weights": weights, "trunk_file": None, "trunk_sha256": "random"}
    if path is not None:
        trunk = load_state_dict(path)
        own = model.net.state_dict()
        mapped = {}
        for key in own:  # lpips' net.slice<k>.<i>.<param> is torchvision's features.<i>.<param>
            src = "features." + key.split(".", 1)[1]
            if src not in trunk:
                raise AsukaError(f"{path}: no tensor {src}; not the torchvision {net} weights")
            mapped[key] = trunk[src]
        try:
            model.net.load_state_dict(mapped)
        except RuntimeError as exc:
            raise AsukaError(f"{path}: not the torchvision {net} weights ({str(exc).splitlines()[-1]})") from None
        info.update(trunk_file=str(path), trunk_sha256=file_sha256(path))
    model.requires_grad_(False)
    return model.eval().to(device), info
