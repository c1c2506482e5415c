"""Weights are read without running foreign code; a pickle that needs more is refused with a way out."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from asuka.utils.errors import AsukaError
from asuka.utils.safe_load import TRUST_ENV, load_state_dict


class Payload:
    """Unpickling this runs code: ``__reduce__`` makes pickle call ``exec`` (harmless here: it sets a variable)."""

    def __reduce__(self):
        return (exec, ("import os; os.environ['ASUKA_PWNED'] = '1'",))


def test_safetensors_and_plain_torch_files(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save({"model": state}, tmp_path / "b.pth")
    assert torch.equal(load_state_dict(tmp_path / "a.safetensors")["w"], state["w"])
    assert torch.equal(load_state_dict(tmp_path / "b.pth")["model"]["w"], state["w"])


def test_foreign_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.delenv("ASUKA_PWNED", raising=False)
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)  # a research checkpoint with a pickled object inside
    with pytest.raises(AsukaError, match=rf"evil.pth: refusing to unpickle.*{TRUST_ENV}=1"):
        load_state_dict(path)
    assert "ASUKA_PWNED" not in os.environ
    monkeypatch.setenv(TRUST_ENV, "1")  # the documented opt-in for a file the user trusts
    load_state_dict(path)
    assert os.environ.pop("ASUKA_PWNED") == "1"


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AsukaError, match="nope.pth: weights file not found"):
        load_state_dict(tmp_path / "nope.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(AsukaError, match="bad.safetensors: not a readable safetensors file"):
        load_state_dict(tmp_path / "bad.safetensors")


class Opaque:
    """A class the allow-list does not know (pickled by name, harmless, but not ours to import)."""


def test_allow_list_by_name_and_the_refusal_names_the_global(tmp_path, monkeypatch):
    """What released checkpoints pickle next to the weights loads without ASUKA_TRUST_PICKLE (argparse args, numpy
    scalars and arrays); any other class is refused, and the message names it."""
    import argparse

    import numpy as np

    monkeypatch.delenv(TRUST_ENV, raising=False)
    weights = {"w": torch.ones(2)}
    torch.save({"model": weights, "args": argparse.Namespace(lr=1e-4), "lr": np.float64(0.5),
                "hist": np.arange(3.0)}, tmp_path / "ok.pth")
    loaded = load_state_dict(tmp_path / "ok.pth")
    assert torch.equal(loaded["model"]["w"], weights["w"]) and loaded["args"].lr == 1e-4 and loaded["lr"] == 0.5
    torch.save({"model": weights, "extra": Opaque()}, tmp_path / "opaque.pth")
    with pytest.raises(AsukaError, match=r"opaque.pth: refusing to unpickle .*test_safe_load.Opaque"):
        load_state_dict(tmp_path / "opaque.pth")


def test_a_metric_folder_with_only_pickled_weights_needs_trust(tmp_path, monkeypatch):
    from asuka.utils.errors import ConfigError
    from asuka.utils.weights import transformers_folder

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    monkeypatch.delenv("ASUKA_TRUST_PICKLE", raising=False)
    with pytest.raises(ConfigError, match=r"paths.clip.*no \*.safetensors weights.*ASUKA_TRUST_PICKLE=1"):
        transformers_folder(tmp_path, "paths.clip", "CLIP", "openai/clip-vit-large-patch14")
    monkeypatch.setenv("ASUKA_TRUST_PICKLE", "1")
    assert transformers_folder(tmp_path, "paths.clip", "CLIP", "openai/clip-vit-large-patch14") == tmp_path
