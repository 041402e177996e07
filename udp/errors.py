"""The shell's configuration error: what `udp` reports for config.yml, apart from the collection specs' own."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration problem, named by its key path."""


def whole_number(value: Any, where: str, low: int, high: int) -> int:
    """An integer config value within [low, high]; ConfigError names the key path otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{where}: must be a whole number from {low} to {high}, got {value!r}")
    return value
