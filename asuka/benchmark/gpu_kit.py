"""The GPU kit (``make gpu-kit``): the wheels a bare GPU machine lacks for our imports, one version each.

A lent GPU machine reaches no package registry and has its own Python (3.12) with torch, transformers and much
else, but not diffusers, hydra-core, omegaconf, lpips, torch-fidelity or wandb. The kit is derived, not listed by
hand: the closure of this package's installed requirements (``pyproject.toml``), walked through the installed
distributions' metadata and stopped at every package the GPU image has (``configs/gpu_kit.yaml: image_packages``),
pinned to the versions this environment resolved. ``scripts/gpu_figures.sh`` installs it there with ``--no-index``.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from asuka.utils.errors import AsukaError, ConfigError

PROJECT = "asuka"


def target_environment(python_version: str) -> dict[str, str]:
    """PEP 508 marker values of the GPU machine (CPython ``python_version`` on Linux x86-64)."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "os_name": "posix", "platform_system": "Linux", "platform_machine": "x86_64"}


def _applies(req: Requirement, env: dict[str, str], extras: Iterable[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in ("", *extras))


def derive_kit(image_packages: Iterable[str], python_version: str, project: str = PROJECT,
               dist_version: Any = metadata.version, dist_requires: Any = metadata.requires) -> dict[str, str]:
    """``{canonical name: installed version}`` of every package our requirements need that the image lacks.

    ``dist_version`` / ``dist_requires`` read the installed metadata (replaceable in tests). A requirement of the
    project's extras (``dev``) is not followed: the GPU machine runs the package, not its tests.
    """
    image = {canonicalize_name(name) for name in image_packages}
    env = target_environment(python_version)
    todo = [(Requirement(text), ()) for text in (dist_requires(project) or [])]
    kit: dict[str, str] = {}
    while todo:
        req, parent_extras = todo.pop()
        name = canonicalize_name(req.name)
        if not _applies(req, env, parent_extras) or name in image:
            continue
        if name not in kit:
            try:
                kit[name] = dist_version(req.name)
            except metadata.PackageNotFoundError as exc:
                raise AsukaError(f"{req.name} (needed by the kit) is not installed here: run `make install` first"
                                 ) from exc
        for text in dist_requires(req.name) or []:
            todo.append((Requirement(text), tuple(req.extras)))
    return dict(sorted(kit.items()))


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"],
                          capture_output=True, text=True)


def download_wheels(kit: dict[str, str], out: Path, python_version: str, platforms: list[str]) -> None:
    """One wheel per kit entry for CPython ``python_version`` on manylinux x86-64 (or pure Python). A package the
    registry has only as an sdist is built here into a wheel, which must then be pure Python (``none-any``)."""
    pins = [f"{name}=={version}" for name, version in kit.items()]
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
              "--abi", f"cp{python_version.replace('.', '')}", "--abi", "abi3", "--abi", "none",
              *[arg for platform in platforms for arg in ("--platform", platform)]]
    if _pip(["download", "--no-deps", "-d", str(out), *target, *pins]).returncode == 0:
        return
    for pin in pins:  # find the packages without a matching wheel, one by one
        if _pip(["download", "--no-deps", "-d", str(out), *target, pin]).returncode == 0:
            continue
        built = _pip(["wheel", "--no-deps", "-w", str(out), pin])
        if built.returncode != 0:
            raise AsukaError(f"{pin}: no wheel for Python {python_version} on manylinux x86-64, and building one "
                             f"failed: {built.stderr.strip().splitlines()[-1] if built.stderr.strip() else '?'}")


def check_kit(out: Path, kit: dict[str, str], max_mib: float) -> list[dict[str, Any]]:
    """Every kit entry present exactly once at its version, every wheel a kit entry, compiled wheels for Linux
    x86-64 only, and the total under ``max_mib``; returns the wheel rows of ``kit.json``."""
    rows, seen = [], {}
    wheels = [(wheel, *parse_wheel_filename(wheel.name)) for wheel in sorted(out.glob("*.whl"))]
    for wheel, name, version, _, _ in wheels:
        if name in seen:
            raise AsukaError(f"{out}: two wheels of {name} ({seen[name]}, {version})")
        seen[name] = str(version)
    for wheel, name, version, _, tags in wheels:
        if name not in kit or kit[name] != str(version):
            raise AsukaError(f"{wheel}: not in the kit ({name} {kit.get(name, 'not needed')})")
        platforms = {tag.platform for tag in tags}
        if platforms != {"any"} and not any(p.endswith("x86_64") for p in platforms):
            raise AsukaError(f"{wheel}: not a Linux x86-64 wheel ({', '.join(sorted(platforms))})")
        rows.append({"file": wheel.name, "name": name, "version": str(version), "bytes": wheel.stat().st_size,
                     "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()})
    missing = sorted(set(kit) - set(seen))
    if missing:
        raise AsukaError(f"{out}: no wheel for {', '.join(missing)}")
    total = sum(row["bytes"] for row in rows) / 2**20
    if total > max_mib:
        raise AsukaError(f"{out}: the kit is {total:.1f} MiB, over max_mib={max_mib} (the device tool carries 64 MiB "
                         "with the working tree)")
    return rows


def build_kit(cfg: DictConfig) -> dict[str, Any]:
    """``make gpu-kit``: derive the list, download the wheels into ``cfg.out`` (stale wheels removed first), check
    them and write ``kit.json`` (names, versions, sizes, sha256) beside them."""
    version = str(cfg.python_version)
    if not version.count(".") == 1 or not all(part.isdigit() for part in version.split(".")):
        raise ConfigError("python_version", f"expected MAJOR.MINOR, got '{version}'")
    kit = derive_kit(cfg.image_packages, version)
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.whl"):
        stale.unlink()
    download_wheels(kit, out, version, list(cfg.platforms))
    rows = check_kit(out, kit, float(cfg.max_mib))
    report = {"python_version": version, "packages": kit, "wheels": rows,
              "total_mib": round(sum(row["bytes"] for row in rows) / 2**20, 2)}
    (out / "kit.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu kit: {len(rows)} wheels, {report['total_mib']} MiB in {out} "
          f"({', '.join(f'{k} {v}' for k, v in kit.items())})")
    return report
