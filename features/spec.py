"""The `collections:` section of config.yml: one typed declaration per departmental source."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apicommon.declaration import declared
from features.crs import CrsError, parse_crs
from features.metadata import DATASET_KEYS, DatasetMetadata, MetadataError, parse_dataset_metadata

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
KEYS = {"title", "description", "keywords", "source", "layer", "crs", "x", "y", "wkt", "latlon", "id", "encoding",
        "time", "access", "style", "changes", *DATASET_KEYS}
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class MapStyle:
    """How maps draw a collection (its tiles' TileJSON and MapLibre style): a colour, the property that names a
    feature; None: the platform's choice."""

    colour: str | None = None
    label: str | None = None
    properties: tuple[str, ...] | None = None  # the attributes its vector tiles carry; None: every property


def parse_style(body: Any, where: str) -> MapStyle:
    """`style: {colour: "#1b7a5a", label: name, properties: [name, height]}` (SpecError naming the key path)."""
    if body is None:
        return MapStyle()
    if not isinstance(body, dict) or set(body) - {"colour", "label", "properties"}:
        raise SpecError(f"{where}: a mapping of `colour` (#rrggbb), `label` (a property name) and `properties` "
                        "(the properties its tiles carry)")
    colour = body.get("colour")
    if colour is not None and not (isinstance(colour, str) and _COLOUR.match(colour)):
        raise SpecError(f"{where}.colour: a colour as #rrggbb, got {colour!r}")
    label = body.get("label")
    if label is not None and not isinstance(label, str):
        raise SpecError(f"{where}.label: a property name")
    properties = body.get("properties")
    if properties is not None and not (isinstance(properties, list) and all(isinstance(n, str) for n in properties)):
        raise SpecError(f"{where}.properties: a list of property names")
    return MapStyle(colour, label, None if properties is None else tuple(properties))


class SpecError(ValueError):
    """A collection declaration that cannot be used, named by its key path."""


@dataclass(frozen=True)
class CollectionSpec:
    """A departmental source declared as an OGC API Features collection."""

    id: str
    title: str
    source: str  # an absolute file path, or postgresql://…#schema.table
    description: str = ""
    keywords: tuple[str, ...] = ()
    layer: str | None = None
    crs: str | None = None  # the source's CRS (an EPSG:n or OGC URI) when the file does not say it
    x: str | None = None
    y: str | None = None
    wkt: str | None = None
    latlon: str | None = None  # a text column "lat, lon" (as open data portals export points)
    id_column: str | None = None
    encoding: str | None = None
    time: str | None = None  # the column `datetime=` filters on
    access: str = "public"
    changes: str = "none"  # a PostGIS table: "trigger" logs where its writes happen (provider_plugins.postgis_changes)
    metadata: DatasetMetadata = field(default=DatasetMetadata(), compare=False)  # themes, licence, … (catalogue)
    style: MapStyle = field(default=MapStyle(), compare=False)  # colour and label on maps
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_postgis(self) -> bool:
        """A PostGIS table rather than a file."""
        return self.source.startswith(("postgresql://", "postgres://"))


def parse_collections(doc: Any, base: Path, taken: Collection[str] = ()) -> dict[str, CollectionSpec]:
    """The `collections:` mapping as specs (`taken`: ids other collections already have); SpecError names the
    key path and the reason."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SpecError("collections: must be a mapping of collection id to its declaration")
    out: dict[str, CollectionSpec] = {}
    for cid, body in doc.items():
        where = f"collections.{cid}"
        if not isinstance(cid, str) or not _ID.match(cid):
            raise SpecError(f"{where}: a collection id is letters, digits, '_', '-' or '.'")
        if cid in taken:
            raise SpecError(f"{where}: the id is taken by one of the platform's own collections "
                            f"({', '.join(sorted(taken))}); choose another")
        declared(body, where, KEYS, SpecError, shape="must be a mapping with at least `source`")
        if "source" not in body:
            raise SpecError(f"{where}.source: missing (a vector file or postgresql://…#schema.table)")
        source = _text(body["source"], f"{where}.source")
        if not source.startswith(("postgresql://", "postgres://")):
            source = str((base / source).resolve())
        elif "#" not in source:
            raise SpecError(f"{where}.source: a PostGIS source names its table: postgresql://…#schema.table")
        keywords = body.get("keywords", [])
        if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
            raise SpecError(f"{where}.keywords: must be a list of strings")
        crs = body.get("crs")
        if crs is not None:
            try:
                parse_crs(str(crs))
            except CrsError as exc:
                raise SpecError(f"{where}.crs: {exc}") from None
        if ("x" in body) != ("y" in body):
            raise SpecError(f"{where}: `x` and `y` go together (the coordinate columns)")
        if sum(k in body for k in ("x", "wkt", "latlon")) > 1:
            raise SpecError(f"{where}: one of `x`/`y`, `wkt` or `latlon`, not several")
        access = body.get("access", "public")
        if access not in ("public", "internal"):
            raise SpecError(f"{where}.access: must be public or internal, got {access!r}")
        changes = body.get("changes", "none")
        if changes not in ("none", "trigger"):
            raise SpecError(f"{where}.changes: must be trigger or none, got {changes!r}")
        if changes == "trigger" and not source.startswith(("postgresql://", "postgres://")):
            raise SpecError(f"{where}.changes: trigger is for a PostGIS table (a file's changes are its re-import)")
        encoding = body.get("encoding")
        if encoding is not None:
            import codecs

            try:
                codecs.lookup(str(encoding))
            except LookupError:
                raise SpecError(f"{where}.encoding: unknown text encoding {encoding!r}") from None
        try:
            metadata = parse_dataset_metadata(body, where)
        except MetadataError as exc:
            raise SpecError(str(exc)) from None
        out[cid] = CollectionSpec(
            id=cid, title=_text(body.get("title", cid), f"{where}.title"), source=source,
            description=_text(body.get("description", ""), f"{where}.description"), keywords=tuple(keywords),
            layer=_opt(body, "layer", where), crs=None if crs is None else str(crs), x=_opt(body, "x", where),
            y=_opt(body, "y", where), wkt=_opt(body, "wkt", where), latlon=_opt(body, "latlon", where),
            id_column=_opt(body, "id", where), encoding=None if encoding is None else str(encoding),
            time=_opt(body, "time", where), access=access, changes=changes, metadata=metadata,
            style=parse_style(body.get("style"), f"{where}.style"))
    return out


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise SpecError(f"{where}: must be text")
    return str(value)


def _opt(body: dict[str, Any], key: str, where: str) -> str | None:
    return None if body.get(key) is None else _text(body[key], f"{where}.{key}")
