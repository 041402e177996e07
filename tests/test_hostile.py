"""Hostile input through a running platform: every limit named in its error, fuzzed query options, bodies,
CQL2 filters and device payloads never giving a 5xx, schemathesis against both OpenAPI documents, SQL
injection refused or harmless, and no file served from outside the static folders."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import response_schema_conformance

from mqtt_bridge.mapping import Reading, Unmappable, map_message
from mqtt_bridge.rules import parse_rules
from tests.conftest import DEMO_DATA, PG_URL, Server, _pg_database, serve_on, start_server, stop_server, wait_until
from tests.test_cql2_text import mutated as mutated_cql2
from tests.test_fuzz_service import entity_like, json_values

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = {"max_body_mb": 1, "max_top": 500, "max_expand_depth": 3}
MQTT_MAX_KB = 1


def _config(path: Path, server: dict[str, Any], mqtt_max_kb: int | None = None) -> Path:
    """A city with two departmental collections (a CSV and a shapefile) and the given `server:` limits."""
    lines = ["collections:",
             "  bikes:", "    title: Bike-share stations", f"    source: {DEMO_DATA / 'ttareungyi_bike_stations.csv'}",
             "    x: longitude", "    y: latitude", "    time: startDate",
             "  districts:", "    title: Seoul districts", f"    source: {DEMO_DATA / 'seoul_municipalities.shp'}",
             "    encoding: cp949", "    crs: EPSG:5174",
             "server:", *(f"  {k}: {v}" for k, v in server.items())]
    if mqtt_max_kb is not None:
        lines += ["mqtt:", f"  max_payload_kb: {mqtt_max_kb}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


THING = {"name": "hostile", "description": "a thing under attack", "properties": {"owner": "city"},
         "Locations": [{"name": "here", "description": "d", "encodingType": "application/geo+json",
                        "location": {"type": "Point", "coordinates": [126.98, 37.57]}}],
         "Datastreams": [{"name": "count", "description": "d", "unitOfMeasurement": {"name": "n", "symbol": "n"},
                          "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                          "Sensor": {"name": "s", "description": "d", "encodingType": "text/plain", "metadata": "m"},
                          "ObservedProperty": {"name": "o", "definition": "d", "description": "d"},
                          "Observations": [{"result": i, "phenomenonTime": f"2024-05-01T10:0{i}:00Z"}
                                           for i in range(3)]}]}


def _seed(client: httpx.Client) -> None:
    assert client.post("/v1.1/Things", json=THING).status_code == 201


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The platform with tight limits (1 MiB bodies, $top 500, $expand 3 levels, 1 KiB MQTT payloads) on
    each store, with one Thing, its Location, Datastream and Observations."""
    tmp = tmp_path_factory.mktemp("hostile")
    extra = ["--config", str(_config(tmp / "config.yml", LIMITS, MQTT_MAX_KB))]
    servers = serve_on(request.param, tmp_path_factory, extra)
    try:
        srv = next(servers)
        _seed(srv.client)
        yield srv
    finally:
        servers.close()


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    return str(body.get("message") or body.get("description"))


# -- limits -----------------------------------------------------------------------------------------------
def test_body_limit_names_the_setting(city: Server) -> None:
    big = orjson.dumps({"name": "x" * (1024 * 1024), "description": "d"})
    for path in ("/v1.1/Things", "/v1.1/$batch", "/v1.1/CreateObservations"):
        message = _error(city.client.post(path, content=big, headers={"Content-Type": "application/json"}), 413)
        assert message == "the request body is over the limit of 1 MiB (server.max_body_mb)"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        for _ in range(40):
            yield b" " * 32768
    r = city.client.post("/v1.1/Things", content=chunks(), headers={"Content-Type": "application/json"})
    assert "server.max_body_mb" in _error(r, 413)
    r = city.client.patch("/v1.1/Things(1)", content=big, headers={"Content-Type": "application/json"})
    assert "server.max_body_mb" in _error(r, 413)
    # under the limit the body is read and judged on its merits
    ok = orjson.dumps({"name": "x" * (1000 * 1000), "description": "d"})
    r = city.client.post("/v1.1/Things", content=ok)
    assert r.status_code == 201
    assert city.client.delete(r.headers["location"]).status_code == 200


def test_top_and_limit_maxima_name_the_setting(city: Server) -> None:
    assert city.client.get("/v1.1/Things", params={"$top": "500"}).status_code == 200
    for params in ({"$top": "501"}, {"$expand": "Datastreams($top=501)"}):
        message = _error(city.client.get("/v1.1/Things", params=params), 400)
        assert "maximum of 500 (server.max_top)" in message
    # a $batch part is held to the same limits
    parts = [{"id": str(i), "method": "get", "url": url} for i, url in enumerate(
        ("Things?$top=500", "Things?$top=501", "Things?$expand=Datastreams($top=501)",
         "Things?$expand=Datastreams/Observations/FeatureOfInterest/Observations"))]
    answers = city.client.post("/v1.1/$batch", json={"requests": parts}).json()["responses"]
    assert [a["status"] for a in answers] == [200, 400, 400, 400]
    assert ["server.max_top" in a["body"]["message"] for a in answers[1:]] == [True, True, False]
    assert "server.max_expand_depth" in answers[3]["body"]["message"]
    assert city.client.get("/ogcapi/collections/bikes/items", params={"limit": "500"}).status_code == 200
    message = _error(city.client.get("/ogcapi/collections/bikes/items", params={"limit": "501"}), 400)
    assert message == "limit: must be from 1 to 500 (server.max_top), got 501"
    # both OpenAPI documents tell clients the same maximum
    sta = city.client.get("/v1.1/openapi.json").json()
    assert sta["components"]["parameters"]["top"]["schema"]["maximum"] == 500
    ogc = city.client.get("/ogcapi/openapi", params={"f": "json"}).json()
    assert ogc["components"]["parameters"]["limit"]["schema"]["maximum"] == 500


def test_expand_depth_names_the_setting(city: Server) -> None:
    for ok in ("Datastreams/Observations/FeatureOfInterest", "Datastreams($expand=Sensor/Datastreams)",
               "Locations,Datastreams($expand=Observations($expand=Datastream))"):
        assert city.client.get("/v1.1/Things", params={"$expand": ok}).status_code == 200, ok
    for deep, levels in (("Datastreams/Observations/FeatureOfInterest/Observations", 4),
                         ("Datastreams($expand=Observations($expand=Datastream($expand=Thing)))", 4),
                         ("Locations,Datastreams/Thing/Datastreams/Thing/Datastreams/Thing/Datastreams", 7)):
        r = city.client.get("/v1.1/Things", params={"$expand": deep})
        assert f"$expand nests {levels} levels; the limit is 3 (server.max_expand_depth)" in _error(r, 400), deep
        assert r.json()["option"] == "$expand"


def _heavy_store(url: str) -> None:
    """A Datastream with 2,000 Observations, written before the server starts (so no write meets the limit)."""
    from sensorthings.service import ApiRequest, Service
    from sensorthings.store.base import Store

    store = Store.open(url)
    try:
        service = Service(store)
        res = service.handle(ApiRequest("POST", "Things", body=orjson.dumps(THING), base="http://x/v1.1"))
        assert res.status == 201
        rows = [[f"2024-05-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", i] for i in range(2000)]
        body = [{"Datastream": {"@iot.id": 1}, "components": ["phenomenonTime", "result"], "dataArray": rows}]
        res = service.handle(ApiRequest("POST", "CreateObservations", body=orjson.dumps(body), base="http://x/v1.1"))
        assert res.status == 201 and "error" not in res.body
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_statement_timeout_names_the_setting(kind: str, tmp_path: Path) -> None:
    # every Observation against every other of its Datastream (correlated, so no store can hash it away)
    heavy = {"$filter": "Datastream/Observations/result gt result add 1000000", "$count": "true"}
    config = ["--config", str(_config(tmp_path / "config.yml", {"statement_timeout_s": 0.05}))]
    gen = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'udp.db'}"
    elif not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
    else:
        gen = _pg_database()
        url = next(gen)
    try:
        _heavy_store(url)
        srv = start_server(url, kind, config)
        try:
            started = time.monotonic()
            r = srv.client.get("/v1.1/Observations", params=heavy)
            assert _error(r, 400) == "the query ran longer than 0.05 s (server.statement_timeout_s)"
            assert time.monotonic() - started < 2  # cancelled, not run to the end
            # the worker and its connections are fine afterwards
            assert srv.client.get("/v1.1/Observations", params={"$top": "5", "$count": "true"}).json()[
                "@iot.count"] == 2003
            assert srv.client.get("/ogcapi/collections/things/items").status_code == 200
            assert srv.client.get("/health").json()["status"] == "ok"
        finally:
            stop_server(srv)
    finally:
        if gen is not None:
            gen.close()


def test_limit_settings_are_checked(tmp_path: Path) -> None:
    from udp.config import ConfigError, load_config

    cfg = load_config(_config(tmp_path / "ok.yml", {"max_body_mb": 2, "max_top": 50, "max_expand_depth": 2,
                                                    "statement_timeout_s": 1.5}, mqtt_max_kb=8))
    assert (cfg.max_body_mb, cfg.max_top, cfg.max_expand_depth, cfg.statement_timeout_s, cfg.mqtt_max_payload_kb) \
        == (2, 50, 2, 1.5, 8)
    assert load_config(None).statement_timeout_s == 30 and load_config(None).max_expand_depth == 5
    for key, value in (("max_body_mb", 0), ("max_top", "many"), ("max_expand_depth", 51),
                       ("statement_timeout_s", -1), ("statement_timeout_s", True)):
        with pytest.raises(ConfigError, match=f"^server\\.{key}: "):
            load_config(_config(tmp_path / "bad.yml", {key: value}))
    with pytest.raises(ConfigError, match=r"^mqtt\.max_payload_kb: "):
        load_config(_config(tmp_path / "bad.yml", {}, mqtt_max_kb=0))
    # a bridge rule cannot take more than the broker lets through
    (tmp_path / "rule.yml").write_text("mqtt:\n  max_payload_kb: 1\nbridge:\n  - topic: a/{x}\n    datastream_id: 1\n"
                                       "    max_payload: 4096\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^bridge\[0\]\.max_payload: 4096 bytes is over mqtt\.max_payload_kb"):
        load_config(tmp_path / "rule.yml")


def test_mqtt_payload_limit(city: Server) -> None:
    assert city.mqtt_port is not None
    received: list[bytes] = []
    subscribed = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hostile-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda _c, _u, m: received.append(m.payload)
    client.on_subscribe = lambda *_a: subscribed.append(1)
    client.connect("127.0.0.1", city.mqtt_port)
    client.loop_start()
    try:
        client.subscribe("devices/#", 1)
        wait_until(lambda: subscribed, 10, "the subscription", 0.01)
        before = city.client.get("/v1.1/Datastreams(1)/Observations", params={"$count": "true"}).json()["@iot.count"]
        big = orjson.dumps({"result": 1, "parameters": {"pad": "x" * 2000}})
        small = orjson.dumps({"result": 2})
        for payload in (big, small):
            client.publish("devices/a", payload, qos=1).wait_for_publish(10)
            client.publish("v1.1/Datastreams(1)/Observations", payload, qos=1).wait_for_publish(10)
        wait_until(lambda: received, 10, "a message", 0.05)
        time.sleep(0.3)
        assert received == [small]  # the 2 KiB message was dropped by the broker, the connection kept
        after = city.client.get("/v1.1/Datastreams(1)/Observations", params={"$count": "true"}).json()["@iot.count"]
        assert after == before + 1
        results = [o["result"] for o in city.client.get("/v1.1/Datastreams(1)/Observations",
                                                          params={"$orderby": "id desc", "$top": "1"}).json()["value"]]
        assert results == [2]
    finally:
        client.loop_stop()
        client.disconnect()


def test_mqtt_creator_refuses_oversize_payloads(tmp_path: Path) -> None:
    # with an external broker nothing stops a large publish before the platform's subscriber gets it
    from sensorthings.mqtt.create import Creator
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    store = Store.open(f"sqlite:///{tmp_path / 'u.db'}")
    try:
        creator = Creator(Service(store), "http://x/v1.1", max_payload=1024)
        creator.create("v1.1/Datastreams(1)/Observations", orjson.dumps({"result": "x" * 2000}))
        assert (creator.rejected, creator.created) == (1, 0)
    finally:
        store.close()


# -- fuzzing through the running server ---------------------------------------------------------------------
PATHS = ["name", "description", "result", "phenomenonTime", "resultTime", "validTime", "id", "@iot.id",
         "properties/owner", "properties/a/b", "parameters/k", "Datastream/name", "Datastream/Thing/name",
         "FeatureOfInterest/feature", "location", "Datastream/unitOfMeasurement/symbol", "Thing/Locations/location",
         "Locations/name", "Datastreams/Observations/result", "time", "unitOfMeasurement", "feature", "encodingType"]
LITERALS = ["1", "-2.5", "0", "'x'", "'it''s'", "''", "null", "true", "false", "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00+09:00/2024-05-02T00:00:00Z", "2024-05-01", "12:00:00", "duration'P1DT2H'",
            "duration'-PT0.5S'", "geography'POINT(126.98 37.57)'", "geography'POLYGON((0 0,3 0,3 3,0 3,0 0))'",
            "geometry'LINESTRING(1 1,2 2)'", "now()", "mindatetime()", "maxdatetime()", "9" * 25, "1e308", "1.5e-7",
            "3L", "2.5d", "-0", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0999-01-01T00:00:00Z"]
FUNCTIONS = {1: ["length", "tolower", "toupper", "trim", "year", "month", "day", "hour", "minute", "second", "date",
                 "time", "round", "floor", "ceiling", "st_length", "fractionalseconds", "totaloffsetminutes"],
             2: ["substringof", "startswith", "endswith", "indexof", "concat", "geo.distance", "geo.intersects",
                 "st_within", "st_intersects", "st_equals", "st_contains", "st_disjoint", "st_touches", "st_overlaps",
                 "st_crosses"],
             3: ["substring", "st_relate"]}
OPERATORS = ["eq", "ne", "gt", "ge", "lt", "le", "and", "or", "add", "sub", "mul", "div", "mod"]
NAVS = ["Datastreams", "Datastream", "Thing", "Things", "Locations", "HistoricalLocations", "Observations", "Sensor",
        "ObservedProperty", "FeatureOfInterest", "MultiDatastreams", "ObservedProperties", "Nope"]
SETS = ["Things", "Observations", "Datastreams", "Locations", "FeaturesOfInterest", "HistoricalLocations",
        "Datastreams(1)/Observations", "Things(1)/Locations", "Observations(1)", "Things(1)"]
PIECES = ["(", ")", "'", "''", ",", ";", "/", " ", "$", "=", "-", ".", "%", "\\", "\x00", "위", "eq", " and ",
          " or ", "not ", "$top=", "$expand=", "$filter=", "($", "T", "Z", ":"]


def _expressions() -> st.SearchStrategy[str]:
    leaf = st.sampled_from(PATHS) | st.sampled_from(LITERALS)

    def grow(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        calls = st.one_of(*(st.builds(lambda f, args: f"{f}({', '.join(args)})", st.sampled_from(names),
                                      st.lists(inner, min_size=n, max_size=n)) for n, names in FUNCTIONS.items()))
        return (st.builds(lambda a, op, b: f"{a} {op} {b}", inner, st.sampled_from(OPERATORS), inner)
                | inner.map(lambda a: f"not {a}") | inner.map(lambda a: f"({a})") | inner.map(lambda a: f"-{a}")
                | calls)

    return st.recursive(leaf, grow, max_leaves=6)


@st.composite
def _mutate(draw: st.DrawFn, text: str) -> str:
    """`text` with up to three pieces inserted, deleted, replaced or duplicated (or left as it is)."""
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 6)))
        piece = draw(st.sampled_from(PIECES) | st.text(max_size=2))
        text = draw(st.sampled_from([text[:i] + piece + text[i:], text[:i] + text[j:], text[:i] + piece + text[j:],
                                     text[:j] + text[i:j] + text[j:]]))
    return text


def _expands() -> st.SearchStrategy[str]:
    def options(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        option = (_expressions().map(lambda e: f"$filter={e}") | _expressions().map(lambda e: f"$orderby={e} desc")
                  | st.sampled_from(["$top=1", "$top=0", "$skip=2", "$count=true", "$select=id,name", "$select=result"])
                  | inner.map(lambda e: f"$expand={e}"))
        return st.builds(lambda nav, opts: f"{nav}({';'.join(opts)})", st.sampled_from(NAVS),
                         st.lists(option, min_size=1, max_size=3))

    leaf = st.lists(st.sampled_from(NAVS), min_size=1, max_size=3).map("/".join)
    single = st.recursive(leaf, options, max_leaves=4)
    return st.lists(single, min_size=1, max_size=3).map(",".join)


def _dumps(value: Any) -> bytes:
    """JSON as any client may write it: integers of any size, Infinity (orjson refuses both)."""
    return json.dumps(value).encode()


def _no_server_error(r: httpx.Response, *what: object) -> None:
    assert r.status_code < 500, (*what, r.status_code, r.text[:500])


@FUZZ
@given(data=st.data())
def test_fuzzed_filter_expand_orderby_never_fail_the_server(city: Server, data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(["$filter", "$expand", "$orderby", "$select"]))
    if option == "$expand":
        text = data.draw(_expands().flatmap(_mutate))
    elif option == "$orderby":
        text = data.draw(st.lists(st.builds(lambda e, d: e + d, _expressions(), st.sampled_from(["", " asc", " desc"])),
                                  min_size=1, max_size=3).map(",".join).flatmap(_mutate))
    elif option == "$select":
        text = data.draw(st.lists(st.sampled_from(PATHS + NAVS), min_size=1, max_size=4).map(",".join).flatmap(_mutate))
    else:
        text = data.draw(_expressions().flatmap(_mutate))
    path = data.draw(st.sampled_from(SETS))
    _no_server_error(city.client.get(f"/v1.1/{path}", params={option: text}), path, option, text)



def test_a_constant_sort_key_orders_nothing(city: Server) -> None:
    # found by the fuzzer on PostgreSQL: `ORDER BY false` is "non-integer constant in ORDER BY", a 500
    plain = city.client.get("/v1.1/Things", params={"$select": "id"}).json()["value"]
    for key in ("not (true)", "true", "1 add 2", "'x'", "not (true), id desc"):
        r = city.client.get("/v1.1/Things", params={"$orderby": key, "$select": "id"})
        assert r.status_code == 200, (key, r.text)
        expected = sorted(plain, key=lambda t: -t["@iot.id"]) if key.endswith("desc") else plain
        assert r.json()["value"] == expected, key


def test_an_in_of_the_wrong_shape_is_a_400(city: Server) -> None:
    # found by the fuzzer: pygeofilter reads `{"op": "in", "args": [[], {"property": …}]}` as it comes, a 500
    for text in ('{"op":"in","args":[[],{"property":"name"}]}', '{"op":"in","args":[["a"],["b"]]}'):
        r = city.client.get("/ogcapi/collections/bikes/items", params={"filter": text, "filter-lang": "cql2-json"})
        assert "IN takes a value first and a list of values second" in _error(r, 400), text


def test_a_nul_byte_is_the_clients_problem_on_both_apis(city: Server) -> None:
    # found by schemathesis: PostgreSQL text cannot hold NUL; the SensorThings API said 400, the OGC API 500
    for path, params in (("/ogcapi/collections/locations/items", {"description": "\x00\n"}),
                         ("/ogcapi/collections/things/items", {"filter": "name = '\x00'"}),
                         ("/v1.1/Things", {"$filter": "name eq '\x00'"})):
        r = city.client.get(path, params=params)
        if city.kind == "postgresql":
            assert "cannot contain NUL" in _error(r, 400), path
        else:
            assert r.status_code == 200, (path, r.text)

def test_a_value_past_a_limit_of_the_database_is_the_clients_problem(city: Server) -> None:
    # a B-tree takes rows up to a third of a page: an index a department adds on a text column refuses a longer value
    if city.kind != "postgresql":
        pytest.skip("SQLite indexes values of any length")
    import psycopg

    with psycopg.connect(city.store, autocommit=True) as conn:
        conn.execute("CREATE INDEX IF NOT EXISTS hostile_things_description ON things (description)")
    try:
        long = {"name": "long", "description": "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(40_000))}
        assert "exceeds a limit of the database" in _error(city.client.post("/v1.1/Things", json=long), 400)
        assert city.client.post("/v1.1/Things", json={"name": "short", "description": "d"}).status_code == 201
    finally:
        with psycopg.connect(city.store, autocommit=True) as conn:
            conn.execute("DROP INDEX hostile_things_description")


_PATCH_OPS = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "x"]),
     "path": st.sampled_from(["", "/", "/name", "/properties/a", "/-", "/~1", "/0"]) | st.text(max_size=6)},
    optional={"value": json_values, "from": st.sampled_from(["/name", ""]) | json_values})


@FUZZ
@given(path=st.sampled_from(SETS + ["CreateObservations", "$batch", "Things(1)/Datastreams", "Datastreams(1)",
                                    "Things(99999999999999999999)", "Things(-1)/Locations/$ref"]),
       method=st.sampled_from(["POST", "PATCH", "PUT"]),
       body=entity_like.map(_dumps) | json_values.map(_dumps) | st.binary(max_size=64)
       | st.lists(_PATCH_OPS, max_size=3).map(_dumps),
       content_type=st.sampled_from(["application/json", "application/json-patch+json", "text/plain",
                                     "multipart/mixed; boundary=b"]))
def test_fuzzed_entity_bodies_never_fail_the_server(city: Server, path: str, method: str, body: bytes,
                                                      content_type: str) -> None:
    r = city.client.request(method, f"/v1.1/{path}", content=body, headers={"Content-Type": content_type})
    _no_server_error(r, method, path, content_type, body[:300])


def test_times_at_the_edge_of_the_calendar(city: Server) -> None:
    # years below 1000 and offsets that push an instant past year 1 or 9999 (found by schemathesis: a year-1
    # time was written as "1-01-01…" on SQLite and no read of it worked again)
    for time_ in ("0001-01-01T00:00:00Z", "0999-12-31T23:59:59.5Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00",
                  "9999-12-31T23:00:00-05:00", "0000-01-01T00:00:00Z", "10000-01-01T00:00:00Z"):
        r = city.client.post("/v1.1/Things(1)/HistoricalLocations", json={"time": time_})
        assert r.status_code in (201, 400), (time_, r.text)
        if r.status_code == 201:
            assert city.client.get(r.headers["location"]).json()["time"][:10] == time_[:10]
        r = city.client.post("/v1.1/Datastreams(1)/Observations", json={"result": 1, "phenomenonTime": time_,
                                                                        "validTime": f"{time_}/{time_}"})
        assert r.status_code in (201, 400), (time_, r.text)
        for flt in (f"time gt {time_}", f"time lt {time_} sub duration'P1D'", f"time ge {time_} add duration'P2D'"):
            assert city.client.get("/v1.1/HistoricalLocations", params={"$filter": flt}).status_code in (200, 400)
    assert city.client.get("/v1.1/HistoricalLocations", params={"$orderby": "time"}).status_code == 200
    assert city.client.get("/v1.1/Observations", params={"$orderby": "phenomenonTime"}).status_code == 200


CQL2_COLLECTIONS = ["bikes", "districts", "things", "locations", "latest_values", "features_of_interest"]
_CQL2_JSON = st.recursive(
    json_values | st.fixed_dictionaries({"property": st.sampled_from(["name", "numOfUnits", "id", "x", ""])
                                         | st.text(max_size=5)}),
    lambda inner: st.fixed_dictionaries({"op": st.sampled_from(["=", "<", "and", "or", "not", "like", "in", "between",
                                                                "isNull", "s_intersects", "t_after", "casei", "+",
                                                                "a_contains", "bbox", "nope"]),
                                         "args": st.lists(inner, max_size=3)})
    | st.fixed_dictionaries({"function": st.fixed_dictionaries({"name": st.text(max_size=5),
                                                                "arguments": st.lists(inner, max_size=2)})})
    | st.lists(inner, max_size=3),
    max_leaves=8)


@FUZZ
@given(cid=st.sampled_from(CQL2_COLLECTIONS),
       query=st.text(max_size=60).map(lambda t: {"filter": t})
       | mutated_cql2().map(lambda t: {"filter": t})
       | _CQL2_JSON.map(lambda j: {"filter": _dumps(j).decode(), "filter-lang": "cql2-json"})
       | st.text(max_size=40).map(lambda t: {"filter": t, "filter-lang": "cql2-json"}))
def test_fuzzed_cql2_never_fails_the_server(city: Server, cid: str, query: dict[str, str]) -> None:
    r = city.client.get(f"/ogcapi/collections/{cid}/items", params=query)
    _no_server_error(r, cid, query)
    if r.status_code == 400:
        assert r.json()["description"].startswith("filter")


@FUZZ
@given(cid=st.sampled_from(CQL2_COLLECTIONS),
       params=st.dictionaries(st.sampled_from(["bbox", "bbox-crs", "datetime", "sortby", "properties", "crs", "limit",
                                               "offset", "skipGeometry", "resulttype", "filter-crs", "f", "name"]),
                              st.text(max_size=20) | st.sampled_from(["..", "1,2,3,4", "-name", "2024-01-01/..",
                                                                      "http://www.opengis.net/def/crs/EPSG/0/5186"]),
                              max_size=3))
def test_fuzzed_items_parameters_never_fail_the_server(city: Server, cid: str, params: dict[str, str]) -> None:
    _no_server_error(city.client.get(f"/ogcapi/collections/{cid}/items", params=params), cid, params)


# every kind of bridge rule: a bare value, JSONPaths for result and times, each member, a MultiDatastream,
# CSV, a Datastream id from the topic, a general JSONPath
RULES = parse_rules([
    {"topic": "a/{s}/count", "datastream": "p {s}", "result": "$.count", "phenomenonTime": "$.time",
     "resultTime": "$.rt", "parameters": {"q": "$.q"}},
    {"topic": "b/{c}/counts", "each": "$.counts", "datastream": "c {c} {key}", "phenomenonTime": "$.ts"},
    {"topic": "c/{c}/all", "multidatastream": "c {c}", "result": ["$.counts.person", "$.counts[0]"]},
    {"topic": "d/{s}/csv", "csv": ["phenomenonTime", "resultTime", "result", "ignore"], "datastream": "pm {s}"},
    {"topic": "e/{id}", "datastream_id": "{id}", "max_payload": 100},
    {"topic": "f/{id}", "datastream": "x", "each": "$.items[*]", "result": "$.v"},
    {"topic": "g/{id}", "datastream": "status {id}"},
])
_TIMES = st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z/2024-05-01T11:00:00Z", "P1D", "", "..",
                          1714557600, 1714557600123, 1e300, -1e30, 2**62])
_PAYLOAD_JSON = st.recursive(
    json_values | _TIMES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["count", "time", "rt", "q", "counts", "ts", "person", "bicycle", "items", "v"])
        | st.text(max_size=4), inner, max_size=5),
    max_leaves=15)
_PAYLOADS = (st.binary(max_size=200) | _PAYLOAD_JSON.map(_dumps) | st.text(max_size=60).map(str.encode)
             | st.sampled_from([b"\xff\xd8\xff\xe0", b"\x89PNG\r\n", b"A" * 600, b"1,2", b"1;2;3;4", b"12.5",
                                b'{"count": 123456789012345678901234567890}', b"NaN", b"[1e999]"]))


@settings(max_examples=800, deadline=None)
@given(index=st.integers(0, len(RULES) - 1), payload=_PAYLOADS)  # an index: hypothesis cannot hash jsonpath-ng's trees
def test_fuzzed_device_payloads_map_or_are_unmappable(index: int, payload: bytes) -> None:
    try:
        readings = map_message(RULES[index], {"s": "7", "c": "GN-1", "id": "7"}, payload,
                               datetime(2026, 1, 1, tzinfo=UTC))
    except Unmappable as exc:
        assert str(exc)
        return
    assert readings and all(isinstance(r, Reading) for r in readings)


# -- schemathesis against both OpenAPI documents ------------------------------------------------------------
SCHEMATHESIS = SchemathesisConfig.from_dict({
    # the coverage phase enumerates every corner of the deep-insert schemas up front: minutes, not seconds
    "phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}},
    "generation": {"mode": "positive", "max-examples": 25, "no-shrink": True, "database": "none"},
})
STA_OPERATIONS = {"serviceRoot", "createThing", "createObservation", "createDatastream_Observations",
                  "createObservations", "batch", "updateThing", "listThing_Datastreams", "listDatastream_Observations",
                  "getObservation_Datastream", "listThingsRefs", "getThing_name", "getThing_properties_value",
                  "getObservation_result", "getDatastream_unitOfMeasurement_value", "listLocation_Things",
                  *(f"list{s}" for s in ("Things", "Locations", "HistoricalLocations", "Datastreams",
                                         "MultiDatastreams", "Sensors", "ObservedProperties", "Observations",
                                         "FeaturesOfInterest")),
                  *(f"get{e}" for e in ("Thing", "Location", "HistoricalLocation", "Datastream", "MultiDatastream",
                                        "Sensor", "ObservedProperty", "Observation", "FeatureOfInterest"))}


@pytest.fixture(scope="module")
def sta_openapi(city: Server) -> Any:
    """The SensorThings OpenAPI document as served."""
    return schemathesis.openapi.from_url(f"{city.url}/v1.1/openapi.json", config=SCHEMATHESIS)


@pytest.fixture(scope="module")
def ogc_openapi(city: Server) -> Any:
    """The OGC API Features OpenAPI document as served (pygeoapi's, localised)."""
    return schemathesis.openapi.from_url(f"{city.url}/ogcapi/openapi?f=json", config=SCHEMATHESIS)


# filters go on the lazy schemas: the fixture's own would be replaced by these
sta_schema = schemathesis.pytest.from_fixture("sta_openapi").include(operation_id=sorted(STA_OPERATIONS))
ogc_schema = schemathesis.pytest.from_fixture("ogc_openapi").include(method="GET")


@sta_schema.parametrize()
def test_sta_openapi(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=30)


@ogc_schema.parametrize()
def test_ogc_openapi(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=30)


def test_what_schemathesis_found_stays_fixed(city: Server) -> None:
    c = city.client
    patch = {"Content-Type": "application/json-patch+json"}
    assert c.patch("/v1.1/Things(0)", content=b'[{"op": "add", "path": "/name", "value": "x"}]',
                   headers=patch).status_code == 404  # was an AssertionError: 500
    r = c.patch("/v1.1/Things(1)", content=b'[{"op": "add", "path": "", "value": null}]', headers=patch)
    assert "must be a Thing object" in _error(r, 400)  # the whole document replaced by null: was a 500
    for path in ("/v1.1/Things(99999999999999999999)", "/v1.1/Things(-9223372036854775809)/name",
                 "/v1.1/Datastreams(10000000000000000000)/Observations"):
        assert c.get(path).status_code == 404, path  # ids beyond BIGINT: the driver's OverflowError was a 500
    r = c.post("/v1.1/Observations", json={"result": 1, "Datastream": {"@iot.id": 2**63}})
    assert "out of range" in _error(r, 400)
    assert c.get("/ogcapi/collections/things/items/99999999999999999999").status_code == 404
    # a bare number in a JSON property: SQLite's NUMERIC affinity handed it back as a number, not JSON text
    r = c.post("/v1.1/Sensors", json={"name": "s", "description": "d", "encodingType": "x", "metadata": -2.5e54})
    assert r.status_code == 201 and c.get(r.headers["location"]).json()["metadata"] == -2.5e54
    assert "offset" in _error(c.get("/ogcapi/collections/things/items", params={"offset": str(2**70)}), 400)
    assert c.get("/ogcapi/collections/bikes/items", params={"id": "0"}).status_code == 200  # a column with gaps
    # pygeoapi's HTML pages: a blank sort key, and a value the provider refuses (400, not pygeoapi's 500)
    assert c.get("/ogcapi/collections/things/items", params={"sortby": "", "f": "html"}).status_code == 200
    r = c.get("/ogcapi/collections/latest_values/items", params={"phenomenonTime": "x", "f": "html"})
    assert r.status_code in (200, 400), r.status_code


def test_sta_openapi_document(city: Server) -> None:
    from openapi_spec_validator import validate

    doc = city.client.get("/v1.1/openapi.json").json()
    validate(doc)
    assert doc["servers"] == [{"url": city.sta, "description": "this platform"}]
    for path in ("/Things", "/Things({id})", "/Things({id})/Datastreams", "/Things({id})/name/$value",
                 "/Observations({id})/Datastream", "/Datastreams({id})/Observations/$ref", "/CreateObservations",
                 "/$batch"):
        assert path in doc["paths"], path
    assert {p["$ref"].rsplit("/", 1)[1] for p in doc["paths"]["/Observations"]["get"]["parameters"]} \
        == {"filter", "expand", "select", "orderby", "top", "skip", "count", "resultFormat"}
    assert set(doc["paths"]["/Things({id})"]) == {"parameters", "get", "patch", "put", "delete"}
    assert doc["components"]["schemas"]["ThingCreate"]["required"] == ["name", "description"]
    # the service root stays what the standard says: no OpenAPI link in it
    assert set(city.client.get("/v1.1").json()) == {"value", "serverSettings"}


# -- SQL injection ----------------------------------------------------------------------------------------
INJECTIONS = ["'; DROP TABLE things; --", "1) OR 1=1 --", "' OR '1'='1", "1; DELETE FROM observations",
              '"; DROP TABLE things; --', "x' UNION SELECT name FROM sqlite_master --", "') OR ('a'='a",
              "1/**/OR/**/1=1", "\\'; DROP TABLE things; --", "things; --", "name) FROM things; --", "%' --",
              "'||(SELECT pg_sleep(5))||'", "1 AND 1=(SELECT COUNT(*) FROM pg_catalog.pg_tables)"]


def _counts(client: httpx.Client) -> dict[str, int]:
    out = {}
    for s in ("Things", "Locations", "Datastreams", "Observations", "Sensors", "ObservedProperties"):
        r = client.get(f"/v1.1/{s}", params={"$count": "true", "$top": "0"})
        assert r.status_code == 200, r.text
        out[s] = r.json()["@iot.count"]
    out["bikes"] = client.get("/ogcapi/collections/bikes/items", params={"resulttype": "hits"}).json()["numberMatched"]
    return out


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def test_sql_injection_is_refused_or_harmless(city: Server) -> None:
    c = city.client
    before = _counts(c)
    for p in INJECTIONS:
        requests: list[tuple[str, dict[str, str]]] = [
            ("/v1.1/Things", {"$filter": f"name eq {_quoted(p)}"}),  # a literal, quoted as the grammar says
            ("/v1.1/Things", {"$filter": f"name eq '{p}'"}),  # a literal that breaks out of its quotes
            ("/v1.1/Things", {"$filter": f"{p} eq 1"}),  # a property path
            ("/v1.1/Things", {"$filter": f"properties/{p} eq 1"}),
            ("/v1.1/Things", {"$filter": f"substringof({_quoted(p)}, name)"}),
            ("/v1.1/Things", {"$orderby": p}),
            ("/v1.1/Things", {"$orderby": f"name, {p}"}),
            ("/v1.1/Things", {"$select": p}),
            ("/v1.1/Things", {"$expand": p}),
            ("/v1.1/Things", {"$expand": f"Datastreams($filter=name eq '{p}')"}),
            ("/v1.1/Things", {"$top": p}),
            ("/v1.1/Things", {"$skiptoken": p}),
            (f"/v1.1/Things({p})", {}),
            (f"/v1.1/Things('{p}')", {}),
            (f"/v1.1/Things(1)/{p}", {}),
            ("/ogcapi/collections/bikes/items", {"filter": f"name = {_quoted(p)}"}),
            ("/ogcapi/collections/bikes/items", {"filter": f"name = '{p}'"}),
            ("/ogcapi/collections/bikes/items", {"filter": f'"{p}" = 1'}),
            ("/ogcapi/collections/bikes/items", {"filter": orjson.dumps({"op": "=", "args": [{"property": p}, 1]})
                                                 .decode(), "filter-lang": "cql2-json"}),
            ("/ogcapi/collections/things/items", {"filter": f"name = {_quoted(p)}"}),
            ("/ogcapi/collections/things/items", {"filter": f"name LIKE {_quoted(p + '%')}"}),
            ("/ogcapi/collections/latest_values/items", {"filter": f'"{p}" = 1'}),
            ("/ogcapi/collections/bikes/items", {"sortby": p}),
            ("/ogcapi/collections/things/items", {"sortby": f"-{p}"}),
            ("/ogcapi/collections/things/items", {"properties": p}),
            ("/ogcapi/collections/bikes/items", {"name": p}),
            (f"/ogcapi/collections/things/items/{p}", {}),
            (f"/ogcapi/collections/{p}/items", {}),
        ]
        for path, params in requests:
            started = time.monotonic()
            r = c.get(path, params=params)
            assert r.status_code in (200, 400, 404), (path, params, r.status_code, r.text[:300])
            assert time.monotonic() - started < 4, (path, params)  # no injected sleep ran
            if r.status_code == 200 and path.endswith("/v1.1/Things") and "$filter" in params:
                assert r.json()["value"] == [], (path, params)  # nothing matched: no OR 1=1 took effect
    assert _counts(c) == before
    # stored as data, found again by exactly that text
    name = INJECTIONS[0] + " " + INJECTIONS[1]
    r = c.post("/v1.1/Things", json={"name": name, "description": INJECTIONS[2],
                                      "properties": {INJECTIONS[3]: INJECTIONS[4]}})
    assert r.status_code == 201, r.text
    found = c.get("/v1.1/Things", params={"$filter": f"name eq {_quoted(name)}"}).json()["value"]
    assert [(t["name"], t["description"]) for t in found] == [(name, INJECTIONS[2])]
    assert c.get("/ogcapi/collections/things/items", params={"filter": f"name = {_quoted(name)}"}).json()[
        "numberMatched"] == 1
    assert c.delete(found[0]["@iot.selfLink"]).status_code == 200
    assert _counts(c) == before


# -- path traversal ----------------------------------------------------------------------------------------
def _raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written: HTTP clients normalise `..` away before it could reach the server."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


TRAVERSALS = ["../../../../../../etc/passwd", "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
              "..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
              "..%5c..%5c..%5c..%5cetc%5cpasswd", "....//....//....//....//etc/passwd", "%2fetc%2fpasswd",
              "/etc/passwd", "%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", "..%00/etc/passwd", "../routes.py",
              "..%2froutes.py", "../../config.py", "%2e%2e/__init__.py"]


def test_static_routes_serve_nothing_outside_their_folder(city: Server) -> None:
    routes = ["/ogcapi/static/"]
    if _raw_get(city.url, "/cockpit/")[0] == 200:  # the cockpit, where it is built
        routes.append("/cockpit/")
    assert _raw_get(city.url, "/ogcapi/static/css/udp.css")[0] == 200  # the route is there and serves its files
    secrets = (b"root:x:0:0", b"root:*:0:0", b"def cockpit_routes", b"def load_config", b"from __future__")
    for route in routes:
        for attack in TRAVERSALS:
            status, body = _raw_get(city.url, route + attack)
            assert status in (400, 404, 405), (route + attack, status, body[:200])
            assert not any(s in body for s in secrets), route + attack


def test_config_sources_may_climb_out_of_the_config_folder(tmp_path: Path) -> None:
    # the steward's own file: `../` is a path like any other, resolved against the config's folder
    from udp.config import load_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bikes.csv").write_bytes((DEMO_DATA / "ttareungyi_bike_stations.csv").read_bytes())
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yml").write_text("collections:\n  bikes:\n    source: ../data/bikes.csv\n"
                                                  "    x: longitude\n    y: latitude\n", encoding="utf-8")
    spec = load_config(tmp_path / "conf" / "config.yml").collections["bikes"]
    assert spec.source == str((tmp_path / "data" / "bikes.csv").resolve())
