"""User-facing errors: one line naming the file or config key and what is wrong."""
from __future__ import annotations


class AsukaError(Exception):
    """A mistake in user input (a path, a config value, a file). Entry scripts print it as one line, no traceback."""


class ConfigError(AsukaError):
    """A config value is out of range or inconsistent; the message starts with the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key


class DataError(AsukaError):
    """A data root, image or mask is missing, empty, unreadable or inconsistent; the message names the path."""
