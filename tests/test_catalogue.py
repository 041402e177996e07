"""The open metadata catalogue: OGC API Records at /ogcapi/collections/catalogue on both stores (a record per file,
PostGIS table, `sensors:` table, ObservedProperty, indicator and service, their extents computed from the data),
its searches, what the public never sees, and the config contract's errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_DATA, Server, serve_on, wait_until
from tests.harness import PG_URL, create_pg

VIEWER = ("viewer", "viewer-password")
WRITER = ("ingest", "ingest-password")
AUTH = "auth:\n  users:\n" + "".join(f"    - {{name: {name}, password: {password}, roles: [{role}]}}\n"
                                     for (name, password), role in ((VIEWER, "read"), (WRITER, "write")))
TREES = [("t1", 9.95, 53.55, "2024-03-01T08:00:00Z"), ("t2", 10.05, 53.60, "2024-05-20T12:30:00Z"),
         ("t3", 10.00, 53.50, "2024-04-11T00:00:00Z")]
CONFIG = f"""title: Catalogue test
publisher: {{name: Free and Hanseatic City of Hamburg, url: https://www.hamburg.de}}
contact: {{name: Urban data team, email: data@example.org}}
license: https://www.govdata.de/dl-de/by-2-0
catalogue:
  themes: [REGI]
  contributor_id: http://dcat-ap.de/def/contributors/transparenzportalHamburg
  political_geocoding: http://dcat-ap.de/def/politicalGeocoding/stateKey/02
{AUTH}collections:
  street_trees:
    title: Street trees
    description: Every tree in the city's streets, with the day it was planted
    keywords: [trees, nature]
    source: trees.csv
    x: lon
    y: lat
    time: planted
    themes: [ENVI]
    license: http://dcat-ap.de/def/licenses/cc-by/4.0
    updated: P1D
  districts:
    title: Seoul districts
    description: The 25 gu of Seoul
    source: {DEMO_DATA / 'seoul_municipalities.shp'}
    encoding: cp949
    crs: EPSG:5174
    id: code
    themes: [REGI]
  parking_secret:
    title: Secret car parks
    description: Car parks of the police
    source: trees.csv
    x: lon
    y: lat
    access: internal
    themes: [TRAN]
sensors:
  - things: counters.csv
    title: Pedestrian counters
    keywords: [pedestrians]
    themes: [TRAN]
    x: lon
    y: lat
    key: id
    name: "counter {{id}}"
    datastreams:
      - name: "pedestrians {{id}}"
        observedProperty: pedestrian count
        unit: {{name: count, symbol: "{{count}}", definition: ucum}}
        observationType: OM_CountObservation
  - things: hidden.csv
    title: Hidden sensors
    themes: [JUST]
    access: internal
    x: lon
    y: lat
    key: id
    name: "hidden {{id}}"
    datastreams:
      - name: "noise {{id}}"
        observedProperty: noise
        unit: {{name: decibel, symbol: dB, definition: ucum}}
indicators:
  pedestrians-by-district:
    title: Pedestrians per district, last hour
    areas: districts
    observedProperty: pedestrian count
    aggregate: sum
    window: PT1H
    themes: [TRAN]
"""


def _postgis_table(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute("CREATE TABLE benches (id integer PRIMARY KEY, kind text, placed timestamptz, "
                     "geom geometry(Point, 4326))")
        conn.execute("INSERT INTO benches VALUES (1, 'wood', '2023-01-02T00:00:00Z', ST_SetSRID(ST_MakePoint(9.9, "
                     "53.4), 4326)), (2, 'stone', '2023-06-30T00:00:00Z', ST_SetSRID(ST_MakePoint(10.2, 53.7), 4326))")
    return f"{url}#public.benches"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("catalogue")
    rows = "\n".join(f"{i},{x},{y},{t}" for i, x, y, t in TREES)
    (tmp / "trees.csv").write_text(f"id,lon,lat,planted\n{rows}\n", encoding="utf-8")
    (tmp / "counters.csv").write_text("id,lon,lat\nc1,127.03,37.50\nc2,127.06,37.52\n", encoding="utf-8")
    (tmp / "hidden.csv").write_text("id,lon,lat\nh1,126.95,37.55\n", encoding="utf-8")
    config = CONFIG
    department = None
    if request.param == "postgresql" and PG_URL:
        department = create_pg(PG_URL, "udp_department")
        config = config.replace("  parking_secret:", f"""  benches:
    title: Benches
    description: Public benches from the parks department's PostGIS
    source: {_postgis_table(department.url)}
    time: placed
    themes: [REGI]
  parking_secret:""")
    (tmp / "config.yml").write_text(config, encoding="utf-8")
    try:
        yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml")])
    finally:
        if department is not None:
            department.drop()


def records(city: Server, auth: tuple[str, str] | None = None, **params: Any) -> dict[str, dict[str, Any]]:
    r = city.client.get("/ogcapi/collections/catalogue/items", params={"limit": 1000, **params}, auth=auth)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["numberMatched"] == len(doc["features"])
    return {f["id"]: f for f in doc["features"]}


def test_the_catalogue_is_a_collection_of_records(city: Server) -> None:
    doc = city.client.get("/ogcapi/collections/catalogue").json()
    assert doc["itemType"] == "record"
    conformance = city.client.get("/ogcapi/conformance").json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/record-core" in conformance
    assert "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/searchable-catalog" in conformance
    ids = {c["id"] for c in city.client.get("/ogcapi/collections").json()["collections"]}
    assert "catalogue" in ids


def test_a_record_for_every_dataset_and_service(city: Server) -> None:
    got = records(city)
    expected = {"street_trees", "districts", "sensors-0", "pedestrians-by-district", "service-ogcapi",
                "service-sensorthings", "things", "latest_values"}
    assert expected <= set(got), set(got)
    if city.kind == "postgresql":
        assert "benches" in got
    trees = got["street_trees"]
    props = trees["properties"]
    assert props["type"] == "dataset" and props["title"] == "Street trees"
    assert props["keywords"] == ["trees", "nature"]
    assert props["license"] == "http://dcat-ap.de/def/licenses/cc-by/4.0"
    assert [c["id"] for c in props["themes"][0]["concepts"]] == ["ENVI"]
    assert props["accrualPeriodicity"] == "http://publications.europa.eu/resource/authority/frequency/DAILY"
    assert {c["name"] for c in props["contacts"]} == {"Free and Hanseatic City of Hamburg", "Urban data team"}
    # the extents, computed from the data
    ring = trees["geometry"]["coordinates"][0]
    assert (min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)) \
        == (9.95, 53.50, 10.05, 53.60)
    assert trees["time"]["interval"] == ["2024-03-01T08:00:00Z", "2024-05-20T12:30:00Z"]
    items = next(ln for ln in trees["links"] if ln["rel"] == "items")
    assert city.client.get(items["href"]).json()["numberMatched"] == 3
    # the default licence where a collection sets none
    assert got["districts"]["properties"]["license"] == "http://dcat-ap.de/def/licenses/dl-by-de/2.0"
    if city.kind == "postgresql":
        assert got["benches"]["time"]["interval"] == ["2023-01-02T00:00:00Z", "2023-06-30T00:00:00Z"]
        ring = got["benches"]["geometry"]["coordinates"][0]
        assert (ring[0], ring[2]) == ([9.9, 53.4], [10.2, 53.7])
    counters = got["sensors-0"]
    assert counters["properties"]["title"] == "Pedestrian counters"
    ring = counters["geometry"]["coordinates"][0]
    assert (ring[0], ring[2]) == ([127.03, 37.50], [127.06, 37.52])
    rels = {(ln["rel"], ln["type"]) for ln in counters["links"]}
    assert ("items", "application/json") in rels
    things = next(ln["href"] for ln in counters["links"] if ln["rel"] == "items")
    assert {t["name"] for t in city.client.get(things).json()["value"]} == {"counter c1", "counter c2"}
    assert any(ln["href"].startswith("mqtt://") and "/Observations" in ln["href"] for ln in counters["links"])
    services = records(city, type="service")
    assert {"service-ogcapi", "service-sensorthings"} <= set(services)
    assert all(f["properties"]["type"] == "service" for f in services.values())
    from ows import mapserver

    if mapserver.mapserv() is not None:  # WMS and WFS answer: services of their own, and a way to each dataset
        assert {"service-wms", "service-wfs"} <= set(services)
        wms = next(ln for ln in trees["links"] if "/wms?" in ln["href"])
        assert city.client.get(wms["href"]).status_code == 200 and "street_trees" in wms["title"]
        assert any("/wfs?" in ln["href"] for ln in trees["links"])


def test_extents_grow_as_observations_arrive(city: Server) -> None:
    sta = city.http("/v1.1/")
    stream = sta.get("Datastreams", params={"$filter": "name eq 'pedestrians c1'"}).json()["value"][0]
    for t in ("2025-01-01T10:00:00Z", "2025-01-03T10:00:00Z"):
        r = sta.post(f"Datastreams({stream['@iot.id']})/Observations", json={"result": 5, "phenomenonTime": t},
                     auth=WRITER)
        assert r.status_code == 201, r.text

    def grown() -> dict[str, Any] | None:
        found = records(city, q="pedestrian count", type="dataset")
        op = next((f for f in found.values() if f["properties"]["recordKind"] == "observed-property"), None)
        return op if op and op["time"] and op["time"]["interval"][1] >= "2025-01-03T10:00:00Z" else None

    op = wait_until(grown, 20, "the ObservedProperty's record to cover the new Observations")
    assert op["time"]["interval"][0] <= "2025-01-01T10:00:00Z"
    assert op["properties"]["title"] == "pedestrian count"
    assert [c["id"] for c in op["properties"]["themes"][0]["concepts"]] == ["TRAN"]  # from its sensors: table


def test_a_new_datastream_appears(city: Server) -> None:
    sta = city.http("/v1.1/")
    r = sta.post("Things", auth=WRITER, json={
        "name": "river gauge", "description": "gauge", "Locations": [{
            "name": "bridge", "description": "", "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [10.01, 53.54]}}],
        "Datastreams": [{"name": "water level", "description": "level", "observationType":
                         "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                         "unitOfMeasurement": {"name": "cm", "symbol": "cm", "definition": "ucum"},
                         "ObservedProperty": {"name": "water level", "description": "The river's water level",
                                              "definition": "level"},
                         "Sensor": {"name": "gauge", "description": "", "encodingType": "text/plain",
                                    "metadata": "x"}}]})
    assert r.status_code == 201, r.text
    found = wait_until(lambda: records(city, q="water level") or None, 20, "the new ObservedProperty's record")
    record = next(iter(found.values()))
    assert record["properties"]["description"] == "The river's water level"
    assert record["geometry"]["coordinates"][0][0] == [10.01, 53.54]


def test_search(city: Server) -> None:
    assert set(records(city, q="tree")) == {"street_trees"}  # stemmed: "trees" in the title
    assert set(records(city, q="planted,gu")) == {"street_trees", "districts"}  # any of the terms
    assert "street_trees" not in records(city, q="police")  # the internal collection's words find nothing
    assert set(records(city, bbox="9.9,53.4,10.1,53.65", type="dataset")) >= {"street_trees"}
    assert "districts" not in records(city, bbox="9.9,53.4,10.1,53.65")
    assert "street_trees" in records(city, datetime="2024-04-01T00:00:00Z")
    assert "street_trees" not in records(city, datetime="2024-06-01T00:00:00Z/..")
    assert set(records(city, ids="street_trees,districts")) == {"street_trees", "districts"}
    assert set(records(city, filter="title LIKE 'Street%' AND themes = 'ENVI'")) == {"street_trees"}
    titles = [f["properties"]["title"] for f in records(city, sortby="-title", type="dataset").values()]
    assert titles == sorted(titles, reverse=True)
    one = city.client.get("/ogcapi/collections/catalogue/items/street_trees").json()
    assert one["id"] == "street_trees" and one["properties"]["title"] == "Street trees"


@pytest.mark.parametrize(("params", "name"), [
    ({"q": ""}, "q"), ({"q": "a,,b"}, "q"), ({"q": "***"}, "q"), ({"bbox": "1,2,3"}, "bbox"),
    ({"datetime": "yesterday"}, "datetime"), ({"filter": "title LIKE"}, "filter"), ({"filter": "nope = 1"}, "filter"),
    ({"type": "map"}, "type"), ({"sortby": "colour"}, "sortby"), ({"colour": "red"}, "colour"),
])
def test_bad_parameters_are_400_naming_them(city: Server, params: dict[str, str], name: str) -> None:
    r = city.client.get("/ogcapi/collections/catalogue/items", params=params)
    assert r.status_code == 400, r.text
    assert r.json()["description"].startswith(name), r.text


def test_internal_data_is_only_for_the_read_role(city: Server) -> None:
    public = records(city)
    assert "parking_secret" not in public and "sensors-1" not in public
    assert not any(f["properties"]["title"] == "noise" for f in public.values())
    assert city.client.get("/ogcapi/collections/catalogue/items/parking_secret").status_code == 404
    full = records(city, auth=VIEWER)
    assert {"parking_secret", "sensors-1"} <= set(full)
    assert any(f["properties"]["title"] == "noise" for f in full.values())


def test_owslib_records_client_searches_it(city: Server) -> None:
    from owslib.ogcapi.records import Records

    client = Records(city.url + "/ogcapi")
    assert "catalogue" in [c["id"] for c in client.collections()["collections"]]
    found = client.collection_items("catalogue", q="tree")
    assert [f["id"] for f in found["features"]] == ["street_trees"]
    found = client.collection_items("catalogue", bbox=[9.9, 53.4, 10.1, 53.65], limit=100)
    assert "street_trees" in [f["id"] for f in found["features"]]
    one = client.collection_item("catalogue", "street_trees")
    assert one["properties"]["title"] == "Street trees"


def test_bad_metadata_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    from udp.config import load_config
    from udp.errors import ConfigError

    cases = {
        "license: https://example.org/my-licence\n": "license: 'https://example.org/my-licence' is not a licence URI",
        "collections:\n  a:\n    source: a.csv\n    themes: [FOOD]\n": "collections.a.themes[0]: 'FOOD' is not an EU",
        "collections:\n  a:\n    source: a.csv\n    license: cc-by\n": "collections.a.license: 'cc-by'",
        "collections:\n  a:\n    source: a.csv\n    updated: sometimes\n": "collections.a.updated: 'sometimes'",
        "contact: {name: x, email: not-mail}\n": "contact.email: 'not-mail' is not an e-mail address",
        "publisher: {url: https://x.org}\n": "publisher.name: missing",
        "catalogue: {contributor_id: hamburg}\n": "catalogue.contributor_id: 'hamburg'",
        "catalogue: {political_geocoding: x}\n": "catalogue.political_geocoding: 'x'",
        "sensors:\n  - things: a.csv\n    name: n\n    themes: ENVI\n": "sensors[0].themes: a list of EU data themes",
        "indicators:\n  i:\n    observedProperty: p\n    aggregate: mean\n    window: PT1H\n    license: x\n":
            "indicators.i.license: 'x'",
    }
    for body, message in cases.items():
        (tmp_path / "config.yml").write_text(body, encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            load_config(tmp_path / "config.yml")
        assert message in str(err.value), (body, str(err.value))


def test_good_metadata_is_typed(tmp_path: Path) -> None:
    from udp.config import load_config

    (tmp_path / "config.yml").write_text(
        "license: https://www.govdata.de/dl-de/by-2-0\npublisher: {name: City}\n"
        "catalogue: {political_geocoding: 'http://dcat-ap.de/def/politicalGeocoding/stateKey/02'}\n"
        "collections:\n  a:\n    source: a.csv\n    themes: [envi, "
        "'http://publications.europa.eu/resource/authority/data-theme/TRAN']\n    updated: PT1H\n", encoding="utf-8")
    cfg = load_config(tmp_path / "config.yml")
    assert cfg.catalogue.license is not None and cfg.catalogue.license.uri == \
        "http://dcat-ap.de/def/licenses/dl-by-de/2.0"
    assert cfg.catalogue.political_geocoding is not None
    assert cfg.catalogue.political_geocoding.level == "http://dcat-ap.de/def/politicalGeocoding/Level/state"
    meta = cfg.collections["a"].metadata
    assert [t.code for t in meta.themes] == ["ENVI", "TRAN"]
    assert meta.updated is not None and meta.updated.code == "HOURLY"


SHAPES = Path(__file__).parent / "data" / "dcat_ap_de_shapes.ttl"
DCAT_NS = "http://www.w3.org/ns/dcat#"


def _graph(body: bytes, fmt: str) -> Any:
    from rdflib import Graph

    return Graph().parse(data=body, format=fmt)


def _valid(graph: Any) -> None:
    from pyshacl import validate
    from rdflib import Graph

    conforms, _, report = validate(graph, shacl_graph=Graph().parse(SHAPES, format="turtle"))
    assert conforms, report


@pytest.mark.parametrize(("how", "media", "fmt"), [
    ({"suffix": ".ttl"}, "text/turtle", "turtle"), ({"suffix": ".jsonld"}, "application/ld+json", "json-ld"),
    ({"suffix": ".rdf"}, "application/rdf+xml", "xml"), ({"accept": "text/turtle"}, "text/turtle", "turtle"),
    ({"accept": "application/ld+json"}, "application/ld+json", "json-ld"),
    ({"accept": "application/rdf+xml;q=0.9, text/plain;q=0.1"}, "application/rdf+xml", "xml"),
])
def test_dcat_in_every_format_is_valid_dcat_ap(city: Server, how: dict[str, str], media: str, fmt: str) -> None:
    from rdflib import URIRef
    from rdflib.namespace import DCAT, DCTERMS, RDF

    path = "/dcat" + how.get("suffix", "")
    r = city.client.get(path, params={"limit": 1000}, headers={"Accept": how.get("accept", "*/*")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(media)
    graph = _graph(r.content, fmt)
    _valid(graph)
    datasets = {str(s).rsplit("/", 1)[-1] for s in graph.subjects(RDF.type, DCAT.Dataset)}
    assert {"street_trees", "districts", "sensors-0", "pedestrians-by-district"} <= datasets
    assert "parking_secret" not in datasets and "sensors-1" not in datasets
    services = {str(s) for s in graph.subjects(RDF.type, DCAT.DataService)}
    assert {city.url + "/ogcapi", city.url + "/v1.1"} <= services
    trees = URIRef(f"{city.url}/ogcapi/collections/catalogue/items/street_trees")
    assert str(graph.value(trees, DCTERMS.title)) == "Street trees"
    assert {str(t) for t in graph.objects(trees, DCAT.theme)} == {
        "http://publications.europa.eu/resource/authority/data-theme/ENVI"}
    assert str(graph.value(trees, URIRef("http://dcat-ap.de/def/dcatde/contributorID"))) == \
        "http://dcat-ap.de/def/contributors/transparenzportalHamburg"
    assert str(graph.value(trees, URIRef("http://dcat-ap.de/def/dcatde/politicalGeocodingURI"))) == \
        "http://dcat-ap.de/def/politicalGeocoding/stateKey/02"
    geojson = [d for d in graph.objects(trees, DCAT.distribution) if str(graph.value(d, DCTERMS.format)).endswith(
        "/file-type/GEOJSON")]
    assert len(geojson) == 1
    assert str(graph.value(geojson[0], DCTERMS.license)) == "http://dcat-ap.de/def/licenses/cc-by/4.0"
    download = str(graph.value(geojson[0], DCAT.downloadURL))
    assert city.client.get(download).json()["numberMatched"] == 3
    # the vector tiles: a distribution whose access URL lists the tilesets
    tiles = [str(graph.value(d, DCAT.accessURL)) for d in graph.objects(trees, DCAT.distribution)]
    tiles = [u for u in tiles if u.endswith("/collections/street_trees/tiles")]
    assert len(tiles) == 1 and city.client.get(tiles[0]).json()["tilesets"]
    period = graph.value(trees, DCTERMS.temporal)
    assert graph.value(period, DCAT.startDate).toPython() == datetime(2024, 3, 1, 8, tzinfo=UTC)


def test_dcat_pages_with_hydra(city: Server) -> None:
    from rdflib import Namespace
    from rdflib.namespace import DCAT, RDF

    hydra = Namespace("http://www.w3.org/ns/hydra/core#")
    seen: set[str] = set()
    url: str | None = f"{city.url}/dcat.ttl?page=1&limit=2"
    pages = 0
    while url:
        r = city.client.get(url)
        assert r.status_code == 200, r.text
        graph = _graph(r.content, "turtle")
        _valid(graph)
        got = {str(s) for s in graph.subjects(RDF.type, DCAT.Dataset)}
        assert len(got) <= 2 and not got & seen
        seen |= got
        view = next(graph.subjects(RDF.type, hydra.PagedCollection))
        total = int(graph.value(view, hydra.totalItems))
        nxt = graph.value(view, hydra.nextPage)
        url = str(nxt).replace("/dcat?", "/dcat.ttl?") if nxt else None
        pages += 1
    assert len(seen) == total and pages == -(-total // 2)


def test_dcat_for_the_read_role_has_the_internal_data(city: Server) -> None:
    from rdflib.namespace import DCAT, RDF

    graph = _graph(city.client.get("/dcat.ttl", params={"limit": 1000}, auth=VIEWER).content, "turtle")
    datasets = {str(s).rsplit("/", 1)[-1] for s in graph.subjects(RDF.type, DCAT.Dataset)}
    assert {"parking_secret", "sensors-1"} <= datasets


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/dcat?page=0", {}, 400), ("/dcat?limit=5000", {}, 400), ("/dcat?colour=red", {}, 400),
    ("/dcat", {"Accept": "image/png"}, 406), ("/dcat.csv", {}, 404),
])
def test_dcat_bad_requests(city: Server, path: str, headers: dict[str, str], status: int) -> None:
    assert city.client.get(path, headers=headers).status_code == status


def test_udp_check_reports_what_metadata_lacks(tmp_path: Path) -> None:
    from udp.check import metadata_gaps
    from udp.config import load_config

    (tmp_path / "config.yml").write_text(
        "catalogue: {political_geocoding: 'http://dcat-ap.de/def/politicalGeocoding/stateKey/02'}\n"
        "collections:\n  a:\n    source: a.csv\n  b:\n    source: b.csv\n    description: B\n    themes: [ENVI]\n"
        "    license: http://dcat-ap.de/def/licenses/cc-zero\n  c:\n    source: c.csv\n    access: internal\n",
        encoding="utf-8")
    gaps = metadata_gaps(load_config(tmp_path / "config.yml"))
    assert {where for where, _ in gaps} == {"catalogue", "publisher", "contact", "collections.a"}
    assert sum(1 for where, _ in gaps if where == "collections.a") == 3  # description, themes, licence
    demo = Path(__file__).resolve().parent.parent / "udp" / "demo" / "config.yml"
    assert metadata_gaps(load_config(demo)) == []
