"""The check every config.yml section parser makes first: a mapping, with only the keys it knows and the ones
it needs; each layer raises its own error type, the message names the key path the same way everywhere."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any


def declared(value: Any, where: str, known: Collection[str], error: type[Exception], *,
             shape: str = "must be a mapping", required: Iterable[str] = ()) -> dict[str, Any]:
    """`value` as a mapping of known keys holding every required one; `error(message)` names the path otherwise."""
    if not isinstance(value, dict):
        raise error(f"{where}: {shape}")
    prefix = f"{where}." if where else ""
    unknown = sorted((k for k in value if k not in known), key=str)
    if unknown:
        raise error(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    for key in required:
        if key not in value:
            raise error(f"{prefix}{key}: missing")
    return value
