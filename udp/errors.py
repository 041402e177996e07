"""The shell's configuration error: what `udp` reports for config.yml, apart from the collection specs' own."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem, named by its key path."""
