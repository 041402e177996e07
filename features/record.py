"""A catalogue record (OGC API Records Part 1: Core): what the platform says about one dataset or service, built by
the shell's catalogue source and rendered here as a record (GeoJSON) and in features.dcat as DCAT."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from features.metadata import THEME_BASE, Agent, CatalogueMetadata, Frequency, Geocoding, License, Theme

DATASET, SERVICE = "dataset", "service"
RECORD_CORE = "http://www.opengis.net/spec/ogcapi-records-1/1.0/req/record-core"


@dataclass(frozen=True)
class Access:
    """A way to the data: a link of the record, a distribution in DCAT. `href` starting with "/" is under the
    platform's public base URL."""

    href: str
    rel: str
    media_type: str
    title: str
    file_type: str | None = None  # the EU file-type code (GEOJSON, JSON): a DCAT distribution when set
    service: str | None = None  # the id of the service record this access goes through


@dataclass(frozen=True)
class Record:
    """One catalogue entry."""

    id: str
    type: str  # DATASET or SERVICE
    kind: str  # what it describes: collection, sensors, observed-property, indicator, service
    title: str
    description: str
    keywords: tuple[str, ...] = ()
    themes: tuple[Theme, ...] = ()
    license: License | None = None
    publisher: Agent | None = None
    contacts: tuple[Agent, ...] = ()
    bbox: tuple[float, float, float, float] | None = None  # CRS84, computed from the data
    start: datetime | None = None  # the temporal extent, computed from the data (UTC)
    end: datetime | None = None
    updated: Frequency | None = None
    geocoding: Geocoding | None = None
    access: str = "public"  # "internal": only for the read role
    links: tuple[Access, ...] = ()
    endpoint: str | None = None  # a service's endpoint (under the public base when it starts with "/")
    conforms_to: tuple[str, ...] = ()  # a service's standards
    serves: tuple[str, ...] = ()  # a service: the ids of the dataset records it serves


class Catalogue(ABC):
    """The records the platform describes itself with, current (built by the shell from its sources)."""

    id: str = "catalogue"
    title: str = "Catalogue"
    description: str = ""
    metadata: CatalogueMetadata = CatalogueMetadata()

    @abstractmethod
    def records(self, sees_internal: bool) -> tuple[str, list[Record]]:
        """The records a requester sees (internal ones only with the read role), with a version that changes
        whenever they do."""


def absolute(href: str, base: str) -> str:
    """A record's href under the public base URL."""
    return base + href if href.startswith("/") else href


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _agent(agent: Agent, role: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": agent.name, "roles": [role]}
    if agent.email:
        out["emails"] = [{"value": agent.email}]
    if agent.url:
        out["links"] = [{"href": agent.url, "rel": "about", "type": "text/html"}]
    return out


def record_document(record: Record, base: str, catalogue_url: str, language: str) -> dict[str, Any]:
    """The record as OGC API Records' GeoJSON record, its links under `base`."""
    props: dict[str, Any] = {
        "type": record.type, "title": record.title, "description": record.description,
        "keywords": list(record.keywords), "language": {"code": language},
    }
    if record.themes:
        props["themes"] = [{"concepts": [{"id": t.code, "title": t.label, "url": t.uri} for t in record.themes],
                            "scheme": THEME_BASE.rstrip("/")}]
    if record.license is not None:
        props["license"] = record.license.uri
    contacts = ([_agent(record.publisher, "publisher")] if record.publisher else []) + [
        _agent(c, "pointOfContact") for c in record.contacts]
    if contacts:
        props["contacts"] = contacts
    if record.updated is not None:
        props["accrualPeriodicity"] = record.updated.uri
    formats = sorted({a.media_type for a in record.links if a.file_type})
    if formats:
        props["formats"] = [{"mediaType": m} for m in formats]
    props["recordKind"] = record.kind
    if record.endpoint is not None:
        props["endpoint"] = absolute(record.endpoint, base)
        props["conformsTo"] = list(record.conforms_to)
    links = [{"href": f"{catalogue_url}/items/{record.id}", "rel": "self", "type": "application/geo+json",
              "title": "this record"},
             {"href": catalogue_url, "rel": "collection", "type": "application/json", "title": "the catalogue"}]
    if record.license is not None:
        links.append({"href": record.license.uri, "rel": "license", "type": "text/html",
                      "title": record.license.title})
    links += [{"href": absolute(a.href, base), "rel": a.rel, "type": a.media_type, "title": a.title}
              for a in record.links]
    geometry = None
    if record.bbox is not None:
        x0, y0, x1, y1 = record.bbox
        geometry = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
    time = None
    if record.start is not None or record.end is not None:
        time = {"interval": [_iso(record.start) or "..", _iso(record.end) or ".."]}
    return {"id": record.id, "type": "Feature", "conformsTo": [RECORD_CORE], "geometry": geometry, "time": time,
            "properties": props, "links": links}
