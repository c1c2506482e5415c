"""Reading config values the same way everywhere: a key of a DictConfig, dict or object, and whether a path-like
value was given at all (Hydra and the command line spell "not given" as null, None or an empty string)."""
from __future__ import annotations

from typing import Any, Mapping


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a DictConfig, a dict or an attribute object."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        try:
            return cfg.get(key, default)
        except TypeError:
            pass
    return getattr(cfg, key, default)


def is_given(value: Any) -> bool:
    """False for None, ``""``, ``"None"`` and ``"null"``."""
    return value is not None and str(value) not in ("", "None", "null")
