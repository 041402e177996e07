"""/dcat: the catalogue for harvesters (GovData through a city's transparency portal) in the DCAT-AP 3 shape with the
DCAT-AP.de conventions: licences from the dcat-ap.de vocabulary, EU file types and data themes, dcatde:contributorID
and dcatde:politicalGeocodingURI; the OGC API, the SensorThings API and the MQTT broker as dcat:DataServices.
Turtle, JSON-LD or RDF/XML by content negotiation or by suffix; paged with Hydra."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, XSD
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from apicommon.request import public_base, sees_internal
from features.metadata import FILE_TYPE_BASE, THEME_BASE, Agent, CatalogueMetadata
from features.record import DATASET, SERVICE, Record, absolute
from features.record_index import RecordIndex
from features.records_app import Indexes
from features.request import ParamError
from features.responses import error as _error

DCATDE = Namespace("http://dcat-ap.de/def/dcatde/")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
LOCN = Namespace("http://www.w3.org/ns/locn#")
GSP = Namespace("http://www.opengis.net/ont/geosparql#")
ACCESS_RIGHTS = "http://publications.europa.eu/resource/authority/access-right/"
LANGUAGES = {"en": "ENG", "de": "DEU", "ko": "KOR", "fr": "FRA", "es": "SPA", "it": "ITA", "nl": "NLD"}
IANA = "https://www.iana.org/assignments/media-types/"
# format → (media type, rdflib serializer); suffixes name them too
FORMATS = {"ttl": ("text/turtle", "turtle"), "jsonld": ("application/ld+json", "json-ld"),
           "rdf": ("application/rdf+xml", "xml")}
SUFFIXES = {"ttl": "ttl", "jsonld": "jsonld", "json": "jsonld", "rdf": "rdf", "xml": "rdf"}
PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class DcatQuery:
    """A /dcat request: which page, how large, in which format."""

    format: str  # a key of FORMATS
    page: int = 1
    limit: int = PAGE_SIZE


def negotiate(suffix: str | None, accept: str) -> str | None:
    """The format a suffix or an Accept header asks for (Turtle when anything goes); None: none offered fits."""
    if suffix is not None:
        return SUFFIXES.get(suffix)
    if not accept.strip():
        return "ttl"
    wanted = []
    for i, part in enumerate(accept.split(",")):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        wanted.append((-q, i, media.strip().lower()))
    for _, _, media in sorted(wanted):
        for key, (offered, _) in FORMATS.items():
            if media == offered or (media == "application/json" and key == "jsonld"):
                return key
        if media in ("*/*", "text/*", "text/html", "application/*"):
            return "ttl"
    return None


def parse_dcat(params: dict[str, str], fmt: str) -> DcatQuery:
    """The paging parameters; anything else is a 400."""
    for name in params:
        if name not in ("page", "limit"):
            raise ParamError(f"{name}: unknown query parameter (parameters: limit, page)")
    values = {}
    for name, low, high, default in (("page", 1, 10**9, 1), ("limit", 1, MAX_PAGE_SIZE, PAGE_SIZE)):
        text = params.get(name)
        if text is None:
            values[name] = default
            continue
        if not text.isdigit() or not low <= int(text) <= high:
            raise ParamError(f"{name}: must be a whole number from {low} to {high}, got {text!r}")
        values[name] = int(text)
    return DcatQuery(fmt, values["page"], values["limit"])


class _Graph:
    """The DCAT graph of one page of a catalogue."""

    def __init__(self, meta: CatalogueMetadata, title: str, description: str, base: str, catalogue_id: str) -> None:
        self.g = Graph()
        for prefix, ns in (("dcat", DCAT), ("dct", DCTERMS), ("foaf", FOAF), ("dcatde", DCATDE), ("hydra", HYDRA),
                           ("vcard", VCARD), ("locn", LOCN), ("gsp", GSP)):
            self.g.bind(prefix, ns)
        self.meta = meta
        self.base = base
        self.lang = meta.language
        self.records_url = f"{base}/ogcapi/collections/{catalogue_id}/items"
        self.catalog = URIRef(f"{base}/dcat")
        g = self.g
        g.add((self.catalog, RDF.type, DCAT.Catalog))
        g.add((self.catalog, DCTERMS.title, Literal(title, lang=self.lang)))
        g.add((self.catalog, DCTERMS.description, Literal(description, lang=self.lang)))
        g.add((self.catalog, DCTERMS.language, self.language()))
        g.add((self.catalog, FOAF.homepage, URIRef(meta.homepage or f"{base}/")))
        g.add((self.catalog, DCAT.themeTaxonomy, URIRef(THEME_BASE.rstrip("/"))))
        if meta.license is not None:
            g.add((self.catalog, DCTERMS.license, URIRef(meta.license.uri)))
        self.publisher = self.agent(meta.publisher or Agent(title))
        g.add((self.catalog, DCTERMS.publisher, self.publisher))
        self.contact = self.vcard(meta.contact) if meta.contact else None

    def language(self) -> URIRef:
        return URIRef("http://publications.europa.eu/resource/authority/language/" + LANGUAGES.get(self.lang, "ENG"))

    def agent(self, agent: Agent) -> BNode | URIRef:
        node = BNode()
        self.g.add((node, RDF.type, FOAF.Organization))
        self.g.add((node, RDF.type, FOAF.Agent))
        self.g.add((node, FOAF.name, Literal(agent.name)))
        if agent.url:
            self.g.add((node, FOAF.homepage, URIRef(agent.url)))
        if agent.email:
            self.g.add((node, FOAF.mbox, URIRef(f"mailto:{agent.email}")))
        return node

    def vcard(self, agent: Agent) -> BNode:
        node = BNode()
        self.g.add((node, RDF.type, VCARD.Organization))
        self.g.add((node, RDF.type, VCARD.Kind))
        self.g.add((node, VCARD.fn, Literal(agent.name)))
        if agent.email:
            self.g.add((node, VCARD.hasEmail, URIRef(f"mailto:{agent.email}")))
        if agent.url:
            self.g.add((node, VCARD.hasURL, URIRef(agent.url)))
        return node

    def uri(self, record: Record) -> URIRef:
        if record.type == SERVICE and record.endpoint is not None:
            return URIRef(absolute(record.endpoint, self.base))
        return URIRef(f"{self.records_url}/{record.id}")

    def common(self, node: URIRef, record: Record) -> None:
        g = self.g
        g.add((node, DCTERMS.title, Literal(record.title, lang=self.lang)))
        g.add((node, DCTERMS.description, Literal(record.description or record.title, lang=self.lang)))
        g.add((node, DCTERMS.publisher, self.agent(record.publisher) if record.publisher else self.publisher))
        for contact in record.contacts:
            g.add((node, DCAT.contactPoint, self.vcard(contact)))
        if not record.contacts and self.contact is not None:
            g.add((node, DCAT.contactPoint, self.contact))
        for word in record.keywords:
            g.add((node, DCAT.keyword, Literal(word, lang=self.lang)))
        if self.meta.contributor_id:
            g.add((node, DCATDE.contributorID, URIRef(self.meta.contributor_id)))
        g.add((node, DCTERMS.accessRights, URIRef(ACCESS_RIGHTS + ("PUBLIC" if record.access == "public"
                                                                   else "NON_PUBLIC"))))

    def dataset(self, record: Record) -> URIRef:
        g = self.g
        node = self.uri(record)
        g.add((self.catalog, DCAT.dataset, node))
        g.add((node, RDF.type, DCAT.Dataset))
        self.common(node, record)
        g.add((node, DCTERMS.identifier, Literal(str(node))))
        g.add((node, DCAT.landingPage, URIRef(f"{node}?f=html")))
        for theme in record.themes:
            g.add((node, DCAT.theme, URIRef(theme.uri)))
        if record.updated is not None:
            g.add((node, DCTERMS.accrualPeriodicity, URIRef(record.updated.uri)))
        if record.geocoding is not None:
            g.add((node, DCATDE.politicalGeocodingURI, URIRef(record.geocoding.uri)))
            if record.geocoding.level:
                g.add((node, DCATDE.politicalGeocodingLevelURI, URIRef(record.geocoding.level)))
        if record.bbox is not None:
            x0, y0, x1, y1 = record.bbox
            place = BNode()
            g.add((node, DCTERMS.spatial, place))
            g.add((place, RDF.type, DCTERMS.Location))
            g.add((place, DCAT.bbox, Literal(f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))",
                                             datatype=GSP.wktLiteral)))
        if record.start is not None or record.end is not None:
            period = BNode()
            g.add((node, DCTERMS.temporal, period))
            g.add((period, RDF.type, DCTERMS.PeriodOfTime))
            if record.start is not None:
                g.add((period, DCAT.startDate, Literal(record.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                                       datatype=XSD.dateTime)))
            if record.end is not None:
                g.add((period, DCAT.endDate, Literal(record.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                                     datatype=XSD.dateTime)))
        licence = record.license or self.meta.license
        for n, access in enumerate(a for a in record.links if a.file_type):
            dist = URIRef(f"{node}#distribution-{n + 1}")
            g.add((node, DCAT.distribution, dist))
            g.add((dist, RDF.type, DCAT.Distribution))
            url = URIRef(absolute(access.href, self.base))
            g.add((dist, DCAT.accessURL, url))
            if access.rel == "items":
                g.add((dist, DCAT.downloadURL, url))
            g.add((dist, DCTERMS.title, Literal(access.title, lang=self.lang)))
            g.add((dist, DCTERMS.format, URIRef(FILE_TYPE_BASE + access.file_type)))
            g.add((dist, DCAT.mediaType, URIRef(IANA + access.media_type)))
            if licence is not None:
                g.add((dist, DCTERMS.license, URIRef(licence.uri)))
            if access.service is not None:
                g.add((dist, DCAT.accessService, URIRef(f"#service:{access.service}")))
        return node

    def service(self, record: Record, datasets: dict[str, URIRef]) -> None:
        g = self.g
        node = self.uri(record)
        g.add((self.catalog, DCAT.service, node))
        g.add((node, RDF.type, DCAT.DataService))
        self.common(node, record)
        g.add((node, DCAT.endpointURL, node))
        for access in record.links:
            if access.rel == "service-desc":
                g.add((node, DCAT.endpointDescription, URIRef(absolute(access.href, self.base))))
        for standard in record.conforms_to:
            g.add((node, DCTERMS.conformsTo, URIRef(standard)))
        if self.meta.license is not None:
            g.add((node, DCTERMS.license, URIRef(self.meta.license.uri)))
        for rid in record.serves:
            if rid in datasets:
                g.add((node, DCAT.servesDataset, datasets[rid]))

    def page(self, q: DcatQuery, total: int, url: str) -> None:
        """Hydra paging, as DCAT harvesters (ckanext-dcat, piveau) follow it."""
        g = self.g
        last = max(1, -(-total // q.limit))
        view = URIRef(f"{url}?page={q.page}&limit={q.limit}")
        g.add((view, RDF.type, HYDRA.PagedCollection))
        g.add((view, RDF.type, HYDRA.PartialCollectionView))
        g.add((view, HYDRA.totalItems, Literal(total)))
        g.add((view, HYDRA.itemsPerPage, Literal(q.limit)))
        for rel, page in ((HYDRA.firstPage, 1), (HYDRA.lastPage, last), (HYDRA.first, 1), (HYDRA.last, last)):
            g.add((view, rel, URIRef(f"{url}?page={page}&limit={q.limit}")))
        if q.page < last:
            for rel in (HYDRA.nextPage, HYDRA.next):
                g.add((view, rel, URIRef(f"{url}?page={q.page + 1}&limit={q.limit}")))
        if q.page > 1:
            for rel in (HYDRA.previousPage, HYDRA.previous):
                g.add((view, rel, URIRef(f"{url}?page={min(q.page - 1, last)}&limit={q.limit}")))


def dcat_graph(index: RecordIndex, q: DcatQuery, meta: CatalogueMetadata, title: str, description: str, base: str,
               catalogue_id: str) -> Graph:
    """One page of the catalogue as a DCAT-AP graph: `limit` datasets, with every service."""
    out = _Graph(meta, title, description, base, catalogue_id)
    datasets = [r for r in index.records if r.type == DATASET]
    page = datasets[(q.page - 1) * q.limit:q.page * q.limit]
    for r in page:
        out.dataset(r)
    nodes = {r.id: out.uri(r) for r in datasets}  # a service serves every dataset, on whichever page
    services = {r.id: out.uri(r) for r in index.records if r.type == SERVICE}
    for r in index.records:
        if r.type == SERVICE:
            out.service(r, nodes)
    # a distribution's access service by the service's URI
    for s, p, o in list(out.g.triples((None, DCAT.accessService, None))):
        sid = str(o).removeprefix("#service:")
        out.g.remove((s, p, o))
        if sid in services:
            out.g.add((s, p, services[sid]))
    out.page(q, len(datasets), f"{base}/dcat")
    return out.g


def serialize(graph: Graph, fmt: str) -> bytes:
    """The graph in a format of FORMATS."""
    _, name = FORMATS[fmt]
    if name == "json-ld":
        context = {"dcat": str(DCAT), "dct": str(DCTERMS), "foaf": str(FOAF), "dcatde": str(DCATDE),
                   "hydra": str(HYDRA), "vcard": str(VCARD), "locn": str(LOCN)}
        return graph.serialize(format="json-ld", context=context, auto_compact=True).encode()
    out = graph.serialize(format=name)
    return out if isinstance(out, bytes) else out.encode()


class DcatCache:
    """Serialized pages, per catalogue version: building and serializing a graph costs more than any request."""

    def __init__(self, size: int = 64) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, bytes] = OrderedDict()
        self.size = size

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        """The cached body, or `make()`'s, kept."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        body = make()
        with self._lock:
            self._entries[key] = body
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return body


def dcat_routes(indexes: Indexes, public_url: str | None) -> list[BaseRoute]:
    """GET /dcat (negotiated) and /dcat.ttl, /dcat.jsonld, /dcat.rdf."""
    cache = DcatCache()
    cat = indexes.catalogue

    async def answer(request: Request) -> Response:
        suffix = request.path_params.get("suffix")
        fmt = negotiate(suffix, request.headers.get("accept", ""))
        if fmt is None:
            offered = ", ".join(m for m, _ in FORMATS.values())
            if suffix is not None:
                return _error(404, "NotFound", f"no /dcat.{suffix} (suffixes: .ttl, .jsonld, .rdf)")
            return _error(406, "NotAcceptable", f"Accept: none of {offered}")
        try:
            q = parse_dcat(dict(request.query_params), fmt)
        except ParamError as exc:
            return _error(400, "InvalidParameterValue", str(exc))
        full = sees_internal(request.scope)
        index = await run_in_threadpool(indexes.get, full)
        base = public_base(request, public_url)
        body = await run_in_threadpool(cache.get, (index.version, full, base, q), lambda: serialize(
            dcat_graph(index, q, cat.metadata, cat.title, cat.description, base, cat.id), fmt))
        media, _ = FORMATS[fmt]
        return Response(body, media_type=media, headers={
            "Vary": "Accept, Authorization", "Cache-Control": "private, no-cache" if full else "public, max-age=60"})

    return [Route("/dcat", answer, methods=["GET", "HEAD"]),
            Route("/dcat.{suffix}", answer, methods=["GET", "HEAD"])]

