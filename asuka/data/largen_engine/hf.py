"""Loading a transformers model and its processor by hub id or local folder, for the model stages."""
from __future__ import annotations

from typing import Any

import torch

from asuka.utils.errors import AsukaError, ConfigError


def load_hf(model_cls: type, name: str, device: str, dtype: str) -> tuple[Any, Any]:
    """``(model in eval mode on device, AutoProcessor)``; ``dtype`` applies on accelerators, CPU stays float32."""
    from transformers import AutoProcessor

    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ConfigError(f"stages.*.dtype of {name}", f"'{dtype}' is not a torch dtype (float16, bfloat16, float32)")
    torch_dtype = getattr(torch, dtype) if torch.device(device).type != "cpu" else torch.float32
    try:
        model = model_cls.from_pretrained(name, dtype=torch_dtype).to(device).eval()
        return model, AutoProcessor.from_pretrained(name)
    except (OSError, ValueError) as exc:  # a missing folder, no network for a hub id, a foreign folder
        raise AsukaError(f"{name}: cannot load {model_cls.__name__} ({str(exc).splitlines()[0]}); give a local "
                         "folder (largen_stages: *.model) or run where the hub is reachable") from None


def model_inputs(batch: Any, model: Any) -> dict[str, Any]:
    """A processor's batch on the model's device, floating tensors in the model's dtype."""
    return {k: (v.to(model.device, model.dtype) if torch.is_floating_point(v) else v.to(model.device))
            if torch.is_tensor(v) else v for k, v in batch.items()}
