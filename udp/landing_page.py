"""The platform's landing page as HTML (the JSON document's links, the city's title, publisher and contact), in the
look of the OGC API pages, whose stylesheet it shares."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Template, select_autoescape


@cache
def _template() -> Template:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    return env.get_template("landing.html")


def landing_html(base: str, title: str, description: str, links: list[dict[str, Any]], publisher: str | None,
                 contact: Any) -> str:
    """The landing page: `links` are the JSON document's (self left out by the caller)."""
    return _template().render(base=base, title=title, description=description, links=links, publisher=publisher,
                              contact=contact)
