"""The limits on what one query may ask for (config.yml `server:`), one object for every way in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """How much one query may ask for; HTTP GETs, `$batch` parts and MQTT topic subscriptions share them.

    Each error that enforces one names its setting (`server.max_top`, `server.max_expand_depth`).
    """

    max_top: int = 10_000  # $top, top-level and inside $expand
    max_expand_depth: int = 5  # $expand levels, `A/B` paths and nested `$expand` options alike
    default_top: int = 100  # the page size when a request gives no $top (never above max_top)

    def __post_init__(self) -> None:
        if self.default_top > self.max_top:
            # a configured max_top below the default page size lowers the page size, rather than every
            # request without $top asking for more than is allowed
            object.__setattr__(self, "default_top", self.max_top)
