"""One way to write an Observation: the same rules, time cover and notifications on every way in.

HTTP POST, CreateObservations, `$batch`, creating by MQTT publish and the device bridge run through a
real `udp serve` with a bridge rule; `udp import-sta` and the bridge's writer run in-process on real
stores. Also: instants come back with the precision they were sent in, and the bridge's fingerprints
of committed messages are pruned.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Server, serve_on
from tests.test_bridge import dead_letter_reasons, publisher, wait_for
from tests.test_mqtt import Listener, wait_subscribed
from tests.test_sta_api import OM, UNIT, create

RULES = """title: Writes test
bridge:
  - topic: writes/{sensor}
    datastream: "writes {sensor}"
    result: $.v
    phenomenonTime: $.t
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def bridged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("writes") / "city.yml"
    config.write_text(RULES)
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(config)])


def measurement_stream(sta: httpx.Client, name: str) -> int:
    """A Thing with a Location and one OM_Measurement Datastream named `name`; the Datastream's id."""
    doc = create(sta, "Things", {
        "name": name, "description": "d", "Locations": [{
            "name": name, "description": "", "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [9.99, 53.55]}}],
        "Datastreams": [{"name": name, "description": "d", "observationType": OM + "OM_Measurement",
                         "unitOfMeasurement": UNIT,
                         "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
                         "ObservedProperty": {"name": "t", "definition": "d", "description": "d"}}]})
    return sta.get(f"Things({doc['@iot.id']})/Datastreams").json()["value"][0]["@iot.id"]


def observations(sta: httpx.Client, ds: int) -> list[dict[str, Any]]:
    r = sta.get(f"Datastreams({ds})/Observations", params={"$orderby": "phenomenonTime", "$top": "1000",
                                                            "$expand": "FeatureOfInterest($select=id)"})
    assert r.status_code == 200, r.text
    return r.json()["value"]


def test_every_way_in_keeps_the_same_rules_covers_times_and_notifies(bridged: Server) -> None:
    sta = httpx.Client(base_url=bridged.sta + "/", timeout=30)
    sensor = uuid.uuid4().hex[:6]
    ds = measurement_stream(sta, f"writes {sensor}")
    topic = f"v1.1/Datastreams({ds})/Observations"
    listener = Listener("127.0.0.1", bridged.mqtt_port, [topic])  # type: ignore[arg-type]
    device = publisher("127.0.0.1", bridged.mqtt_port)  # type: ignore[arg-type]
    try:
        wait_subscribed(bridged.url, [topic])
        # a string result for an OM_Measurement Datastream: refused the same way everywhere
        r = sta.post(f"Datastreams({ds})/Observations",
                     json={"result": "warm", "phenomenonTime": "2001-01-01T00:00:00Z"})
        assert r.status_code == 400 and "wrong result type" in r.json()["message"]
        assert "OM_Measurement" in r.json()["message"]
        r = sta.post("CreateObservations", json=[{
            "Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"],
            "dataArray": [["2002-01-01T00:00:00Z", "warm"], ["2002-01-01T00:00:00Z", 2]]}])
        assert r.status_code == 201 and r.json()[0] == "error" and r.json()[1].endswith(")")
        r = sta.post("$batch", json={"requests": [{
            "id": "1", "method": "post", "url": f"Datastreams({ds})/Observations", "body": {"result": "warm"}}]})
        assert r.json()["responses"][0]["status"] == 400
        device.publish(topic, orjson.dumps({"result": "warm", "phenomenonTime": "2003-01-01T00:00:00Z"}), qos=1)
        device.publish(f"writes/{sensor}", orjson.dumps({"v": "warm", "t": "2004-01-01T00:00:00Z"}), qos=1)

        # and a number is stored the same way everywhere, each way notifying and covering the times
        create(sta, f"Datastreams({ds})/Observations", {"result": 1, "phenomenonTime": "2001-01-01T00:00:00Z"})
        sta.post("$batch", json={"requests": [{"id": "1", "method": "post", "url": f"Datastreams({ds})/Observations",
                                               "body": {"result": 3, "phenomenonTime": "2005-01-01T00:00:00Z"}}]})
        device.publish(topic, orjson.dumps({"result": 4, "phenomenonTime": "2003-01-01T00:00:00Z"}), qos=1)
        device.publish(f"writes/{sensor}", orjson.dumps({"v": 5, "t": "2004-01-01T00:00:00Z"}), qos=1)
        wait_for(lambda: len(observations(sta, ds)) == 5)
        got = observations(sta, ds)
        assert [(o["result"], o["phenomenonTime"][:4]) for o in got] == [
            (1, "2001"), (2, "2002"), (4, "2003"), (5, "2004"), (3, "2005")]
        # each got its FeatureOfInterest from the Thing's Location, the same one
        assert len({o["FeatureOfInterest"]["@iot.id"] for o in got}) == 1
        assert sta.get(f"Datastreams({ds})").json()["phenomenonTime"] == "2001-01-01T00:00:00Z/2005-01-01T00:00:00Z"
        for o in got:
            note = listener.wait(topic, where=lambda p, i=o["@iot.id"]: p.get("@iot.id") == i)  # not the creates
            assert note == sta.get(f"Observations({o['@iot.id']})").json()
        # the bridge dead-letters the string with the rule's reason
        wait_for(lambda: dead_letter_reasons(bridged, f"writes/{sensor}") != [])
        reason = dead_letter_reasons(bridged, f"writes/{sensor}")
        assert len(reason) == 1 and "wrong result type" in reason[0] and "OM_Measurement" in reason[0]
    finally:
        device.loop_stop()
        listener.close()


@pytest.mark.parametrize(("sent", "back"), [
    ("2015-03-03T00:00:00Z", "2015-03-03T00:00:00Z"),
    ("2015-03-03T00:00:00.5Z", "2015-03-03T00:00:00.5Z"),
    ("2015-03-03T00:00:00.120Z", "2015-03-03T00:00:00.12Z"),
    ("2015-03-03T01:00:00+01:00", "2015-03-03T00:00:00Z"),
    ("2015-03-03T01:00:00.123456+01:00/2015-03-03T02:00:00Z", "2015-03-03T00:00:00.123456Z/2015-03-03T02:00:00Z"),
    ("0999-12-31T23:59:59.000001Z", "0999-12-31T23:59:59.000001Z"),
    ("2016-02-29T12:00:10.000100Z/2016-02-29T12:00:10.1Z", "2016-02-29T12:00:10.0001Z/2016-02-29T12:00:10.1Z"),
])
def test_instants_come_back_as_precise_as_they_were_sent(sta: httpx.Client, sent: str, back: str) -> None:
    ds = measurement_stream(sta, f"precision {uuid.uuid4().hex[:6]}")
    made = create(sta, f"Datastreams({ds})/Observations",
                  {"result": 1, "phenomenonTime": sent, "resultTime": "2015-03-03T00:00:00Z"})
    got = sta.get(f"Observations({made['@iot.id']})").json()
    assert got["phenomenonTime"] == back and got["resultTime"] == "2015-03-03T00:00:00Z"
    assert made["phenomenonTime"] == back
    # and a filter on the start as written back finds it
    start = back.split("/")[0]
    hit = sta.get(f"Datastreams({ds})/Observations", params={"$filter": f"phenomenonTime ge {start}"})
    assert [o["@iot.id"] for o in hit.json()["value"]] == [made["@iot.id"]]
    miss = sta.get(f"Datastreams({ds})/Observations", params={"$filter": f"phenomenonTime lt {start}"})
    assert miss.json()["value"] == []
    # a chart's page: on PostgreSQL the database writes the times (PostgresDialect.instant_text), the same way
    chart = sta.get(f"Datastreams({ds})/Observations", params={"$select": "result,phenomenonTime"}).json()
    assert chart["value"] == [{"result": 1, "phenomenonTime": back}]


# -- in-process ways in, on real stores ---------------------------------------------------------------
def device_message(i: int, dup: bool = False, ack: Any = None) -> Any:
    """The bridge's Message for `{"v": i}` on topic d/1, mapped by the rule d/{s} → Datastream "ds {s}"."""
    from mqtt_bridge.mapping import map_message, match
    from mqtt_bridge.rules import parse_rules
    from mqtt_bridge.writer import Message
    from sensorthings.times import now

    rule, captures = match(parse_rules([{"topic": "d/{s}", "datastream": "ds {s}", "result": "$.v"}]), "d/1")
    payload = orjson.dumps({"v": i})
    return Message("d/1", payload, now(), map_message(rule, captures, payload, now()), dup=dup, ack=ack)


def fingerprints_kept(store: Any) -> int:
    """How many committed messages' fingerprints the bridge keeps in `store`."""
    from sqlalchemy import func, select

    from mqtt_bridge import deadletters

    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(deadletters.seen_messages)).scalar_one()


def test_bridge_forgets_old_fingerprints_but_knows_recent_ones(store_url: str) -> None:
    from mqtt_bridge.writer import Writer
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    store = Store.open(store_url)
    try:
        placed_stream(Service(store), "OM_Measurement", "ds 1")
        writer = Writer(store, batch_size=20, keep_seen=50, prune_every=None)
        sizes = []
        for batch in range(10):
            writer.write([device_message(batch * 20 + k) for k in range(20)])
            writer.prune()
            sizes.append(fingerprints_kept(store))
        # the table stays within what is kept plus one batch, however many messages go through
        assert max(sizes) <= 50 + 20 and sizes[-1] == sizes[-3], sizes
        assert writer.forgotten == 200 - sizes[-1] and writer.stored == 200
        writer.write([device_message(199, dup=True)])  # the redelivery of a recent message is still recognised
        writer.write([device_message(0, dup=True)])  # one older than any redelivery can be is a new message again
        writer.close()
        assert (writer.duplicates, writer.stored) == (1, 201)
    finally:
        store.close()


def test_bridge_writes_while_its_fingerprints_are_pruned(store_url: str) -> None:
    # the fingerprints are pruned in a thread of their own: pruned between two batches, the writes waited for it
    # (every 10 s, the notifications' p99 tripled). Here a prune waits for a lock another transaction holds on the
    # oldest fingerprints, and the writer goes on storing and acknowledging meanwhile
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: a prune and a batch wait for each other whichever thread prunes")
    from sqlalchemy import text

    from mqtt_bridge.writer import Message, Writer
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    store = Store.open(store_url)
    blocker = store.engine.connect()
    try:
        placed_stream(Service(store), "OM_Measurement", "ds 1")
        acked: list[int] = []

        def message(i: int) -> Message:
            return device_message(i, ack=lambda: acked.append(i))

        seeding = Writer(store, prune_every=None)
        for batch in range(4):  # a batch's fingerprints share its time: four times
            seeding.write([message(batch * 10 + k) for k in range(10)])
        seeding.close()
        acked.clear()
        blocker.execute(text("SELECT fingerprint FROM bridge_seen_messages FOR UPDATE"))
        writer = Writer(store, batch_size=20, keep_seen=10, prune_every=0.05)

        def pruning_waits() -> bool:
            with store.read() as conn:
                return conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'DELETE FROM bridge_seen_messages%'")).scalar_one() > 0

        wait_for(pruning_waits, timeout=10)
        for i in range(100, 150):
            writer.submit(message(i))
        wait_for(lambda: len(acked) == 50, timeout=10)
        assert writer.stored == 50 and pruning_waits()
        blocker.rollback()
        wait_for(lambda: fingerprints_kept(store) <= 10 + 20, timeout=10)
        writer.close()
        assert writer.forgotten >= 20
    finally:
        blocker.close()
        store.close()


def test_import_sta_writes_through_the_same_rules(store_url: str, tmp_path: Path) -> None:
    import io

    from sensorthings.service import Service
    from sensorthings.store.base import Change, Store
    from udp.import_sta import Fetcher, IdMap, Importer

    page = {"value": [{
        "@iot.id": 1, "name": "station", "description": "d",
        "Locations": [{"@iot.id": 1, "name": "here", "description": "d", "encodingType": "application/geo+json",
                       "location": {"type": "Point", "coordinates": [9.9, 53.5]}}],
        "Datastreams": [{"@iot.id": 7, "name": "air", "description": "d", "observationType": OM + "OM_Measurement",
                         "unitOfMeasurement": UNIT,
                         "Sensor": {"@iot.id": 1, "name": "s", "description": "d", "encodingType": "t",
                                    "metadata": "m"},
                         "ObservedProperty": {"@iot.id": 1, "name": "t", "definition": "d", "description": "d"},
                         "Observations": [
                             {"@iot.id": 1, "phenomenonTime": "2024-05-01T08:00:00Z", "result": 21.5},
                             {"@iot.id": 2, "phenomenonTime": "2024-05-01T09:00:00Z", "result": "warm"},
                             {"@iot.id": 3, "phenomenonTime": "2024-05-01T10:00:00Z", "result": 23}]}]}]}
    source = tmp_path / "page.json"
    source.write_bytes(orjson.dumps(page))
    heard: list[Change] = []
    store = Store.open(store_url)
    store.listeners.append(heard.extend)
    err = io.StringIO()
    try:
        importer = Importer(store, IdMap(tmp_path / "map.json", store_url), Fetcher(0, 0.01, 10, err), err)
        importer.run(str(source))
        assert importer.failures == 1
        assert "Observations[1]: wrong result type: the observationType of Datastream" in err.getvalue()
        svc = Service(store)
        ds = svc.call("GET", "Datastreams", **{"$filter": "name eq 'air'"})["value"][0]
        assert ds["phenomenonTime"] == "2024-05-01T08:00:00Z/2024-05-01T10:00:00Z"
        got = svc.call("GET", f"Datastreams({ds['@iot.id']})/Observations", **{"$orderby": "phenomenonTime"})["value"]
        assert [o["result"] for o in got] == [21.5, 23]
        # the changes listeners hear carry the rows as written: notifications need no read-back
        notes = [c for c in heard if c.entity.name == "Observation"]
        assert sorted(c.id for c in notes) == sorted(o["@iot.id"] for o in got)
        assert all(c.kind == "create" and c.row is not None and c.row["id"] == c.id for c in notes)
    finally:
        store.close()


def test_multidatastream_results_follow_each_observation_type(sta: httpx.Client) -> None:
    name = f"multi {uuid.uuid4().hex[:6]}"
    thing = create(sta, "Things", {"name": name, "description": "d", "Locations": [{
        "name": name, "description": "", "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [9.99, 53.55]}}]})
    md = create(sta, "MultiDatastreams", {
        "name": name, "description": "d", "observationType": OM + "OM_ComplexObservation",
        "multiObservationDataTypes": [OM + "OM_TruthObservation", OM + "OM_CountObservation"],
        "unitOfMeasurements": [UNIT, UNIT], "Thing": {"@iot.id": thing["@iot.id"]},
        "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
        "ObservedProperties": [{"name": "open", "definition": "d", "description": "d"},
                               {"name": "cars", "definition": "d", "description": "d"}]})["@iot.id"]
    path = f"MultiDatastreams({md})/Observations"
    assert create(sta, path, {"result": [True, 12], "phenomenonTime": "2020-01-01T00:00:00Z"})["result"] == [True, 12]
    assert create(sta, path, {"result": [None, 3.0]})["result"] == [None, 3.0]  # null fits, 3.0 is an integer
    for bad, says in (([1, 12], "multiObservationDataTypes[0] is OM_TruthObservation"),
                      ([True, 1.5], "multiObservationDataTypes[1] is OM_CountObservation"),
                      ([True], "an array of 2 values")):
        r = sta.post(path, json={"result": bad})
        assert r.status_code == 400 and says in r.json()["message"], r.text
    r = sta.post("CreateObservations", json=[{"MultiDatastream": {"@iot.id": md}, "components": ["result"],
                                              "dataArray": [[[False, 0]], [["no", 0]]]}])
    assert r.status_code == 201 and r.json()[1] == "error" and r.json()[0] != "error"
    assert sta.get(f"MultiDatastreams({md})").json()["phenomenonTime"].startswith("2020-01-01T00:00:00Z/")


def test_each_observation_gets_its_own_things_feature_in_a_shared_write(store_url: str) -> None:
    """Rows of several Things in one group commit: each row's generated FeatureOfInterest is its own Thing's
    newest Location's, whether that FeatureOfInterest is made in the write or found with the stream (a
    correlated subquery once picked one Thing's for all)."""
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    store = Store.open(store_url)
    service = Service(store)
    try:
        streams = []
        for k in range(3):
            thing = service.call("POST", "Things", {
                "name": f"t{k}", "description": "d", "Locations": [{
                    "name": f"place {k}", "description": "", "encodingType": "application/geo+json",
                    "location": {"type": "Point", "coordinates": [10 + k, 53]}}],
                "Datastreams": [{"name": f"s{k}", "description": "d", "observationType": OM + "OM_Measurement",
                                 "unitOfMeasurement": UNIT,
                                 "Sensor": {"name": "s", "description": "d", "encodingType": "text/html",
                                            "metadata": "m"},
                                 "ObservedProperty": {"name": "p", "definition": "d", "description": "d"}}]})
            streams.append(service.call("GET", f"Things({thing['@iot.id']})/Datastreams")["value"][0]["@iot.id"])
        for _ in range(2):  # the first write makes the FeaturesOfInterest, the second finds them
            service.call("POST", "CreateObservations", [
                {"Datastream": {"@iot.id": ds}, "components": ["result"], "dataArray": [[1], [2]]} for ds in streams])
        for k, ds in enumerate(streams):
            got = service.call("GET", f"Datastreams({ds})/Observations", None, **{"$expand": "FeatureOfInterest"})
            assert {o["FeatureOfInterest"]["name"] for o in got["value"]} == {f"place {k}"}
            assert len(got["value"]) == 4
        assert len(service.call("GET", "FeaturesOfInterest")["value"]) == 3
    finally:
        store.close()


@pytest.mark.parametrize("size", [2, 9, 33], ids=["two", "few", "bulk"])
def test_a_shared_write_gives_each_row_its_id_and_each_stream_its_span(store_url: str, size: int) -> None:
    """Rows of two Datastreams and a MultiDatastream interleaved in one write (up to FEW rows a statement each on
    PostgreSQL, sent together; more by COPY): each id is its own row's, each stream's phenomenonTime and resultTime
    span its own rows, JSON columns come back whole."""
    from sensorthings.service import Service
    from sensorthings.store.base import Store
    from sensorthings.store.observations import ObservationRow
    from sensorthings.times import parse_instant

    store = Store.open(store_url)
    service = Service(store)
    try:
        sensor = {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"}
        prop = {"name": "p", "definition": "d", "description": "d"}
        thing = service.call("POST", "Things", {
            "name": "t", "description": "d", "Locations": [{
                "name": "here", "description": "", "encodingType": "application/geo+json",
                "location": {"type": "Point", "coordinates": [10, 53]}}],
            "Datastreams": [{"name": f"s{k}", "description": "d", "observationType": OM + "OM_Measurement",
                             "unitOfMeasurement": UNIT, "Sensor": sensor, "ObservedProperty": prop} for k in range(2)],
            "MultiDatastreams": [{"name": "m", "description": "d", "unitOfMeasurements": [UNIT],
                                  "observationType": OM + "OM_ComplexObservation",
                                  "multiObservationDataTypes": [OM + "OM_Measurement"], "Sensor": sensor,
                                  "ObservedProperties": [prop]}]})
        a, b = (d["@iot.id"] for d in service.call("GET", f"Things({thing['@iot.id']})/Datastreams")["value"])
        multi = service.call("GET", f"Things({thing['@iot.id']})/MultiDatastreams")["value"][0]["@iot.id"]
        owners = [("d", a), ("d", b), ("m", multi)]
        rows = []
        for i in range(size):
            kind, stream = owners[i % 3]
            rows.append(ObservationRow.of(
                [float(i)] if kind == "m" else float(i), phenomenon_time_start=parse_instant(f"2026-03-01T00:{i:02d}Z"),
                result_time=parse_instant(f"2026-03-02T00:{i:02d}Z"), parameters={"i": i, "kind": [kind]},
                datastream_id=stream if kind == "d" else None, multi_datastream_id=stream if kind == "m" else None))
        ids = store.writer.write(rows).ids
        assert len(set(ids)) == size
        for i, id_ in enumerate(ids):
            got = service.call("GET", f"Observations({id_})")
            assert (got["result"], got["parameters"]) == ([float(i)] if i % 3 == 2 else float(i),
                                                          {"i": i, "kind": ["m" if i % 3 == 2 else "d"]})
        for k, (kind, stream) in enumerate(owners):
            hours = [i for i in range(size) if i % 3 == k]
            if not hours:
                continue
            doc = service.call("GET", f"{'MultiDatastreams' if kind == 'm' else 'Datastreams'}({stream})")
            first, last = hours[0], hours[-1]
            assert doc["phenomenonTime"] == f"2026-03-01T00:{first:02d}:00Z/2026-03-01T00:{last:02d}:00Z"
            assert doc["resultTime"] == f"2026-03-02T00:{first:02d}:00Z/2026-03-02T00:{last:02d}:00Z"
    finally:
        store.close()


def placed_stream(service: Any, kind: str, name: str | None = None) -> int:
    """A new Thing with a Location and one Datastream of observationType `kind`, called `name` (by default `kind`):
    the Datastream's id."""
    thing = service.call("POST", "Things", {
        "name": "t", "description": "d", "Locations": [{
            "name": "here", "description": "", "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [10, 53]}}],
        "Datastreams": [{"name": name or kind, "description": "d", "observationType": OM + kind,
                         "unitOfMeasurement": UNIT,
                         "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
                         "ObservedProperty": {"name": "p", "definition": "d", "description": "d"}}]})
    return service.call("GET", f"Things({thing['@iot.id']})/Datastreams")["value"][0]["@iot.id"]


def inserted_at_once(conn: Any, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: rows begun, inserted and committed in one pipeline, as the group-commit writer writes a few."""
    from sensorthings.store import observations

    with observations._at_once(conn, True) as begins:
        assert begins
        observations._insert_widening(conn, rows, True)


def test_a_few_rows_alone_in_a_write_take_two_round_trips_and_wait_for_a_begun_transaction(store_url: str,
                                                                                         tmp_path: Path) -> None:
    """PostgreSQL: the group-commit writer's few rows (`commits`): their streams read without a transaction, then
    begun, inserted and committed in one pipeline: two round trips where a single POST took five. In a transaction
    that has begun already they are written in it, and are gone with its rollback."""
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's round trips")
    import psycopg
    from sqlalchemy import text

    from sensorthings.service import Service
    from sensorthings.store.base import Store
    from sensorthings.store.observations import ObservationRow
    from sensorthings.store.postgres import libpq_url
    from sensorthings.times import parse_instant

    store = Store.open(store_url)
    service = Service(store)
    try:
        ds = placed_stream(service, "OM_Measurement")
        service.call("POST", "Observations", {"result": 0, "Datastream": {"@iot.id": ds}})  # its feature made

        def rows() -> list[ObservationRow]:
            return [ObservationRow.of(float(i), phenomenon_time_start=parse_instant(f"2026-03-01T00:{i:02d}Z"),
                                      datastream_id=ds) for i in range(3)]

        def stored() -> int:
            with psycopg.connect(libpq_url(store_url)) as other:
                return other.execute("SELECT count(*) FROM observations").fetchone()[0]  # type: ignore[index]

        trace = tmp_path / "trace.txt"
        with store.write() as (conn, changes), trace.open("w") as out:
            pgconn = conn.connection.driver_connection.pgconn
            pgconn.trace(out.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                ids = store.write_observations(conn, rows(), changes, commits=True)
            finally:
                pgconn.untrace()
            assert stored() == 4  # committed already: the transaction's own commit has nothing left to do
        sent = [line.split("\t")[2] for line in trace.read_text().splitlines() if line.split("\t")[0] == "F"]
        assert sent.count("Sync") + sent.count("Query") == 2, sent  # each ends a round trip
        assert len(set(ids)) == 3 and None not in ids

        with pytest.raises(RuntimeError), store.write() as (conn, changes):
            conn.execute(text("SELECT 1"))  # begun
            store.write_observations(conn, rows(), changes, commits=True)
            assert stored() == 4  # not committed by the write
            raise RuntimeError("rolled back")
        assert stored() == 4
        assert service.call("GET", f"Datastreams({ds})")["phenomenonTime"].startswith("2026-03-01T00:00:00Z/")
    finally:
        store.close()


def test_a_single_post_whose_connection_was_cut_answers_503_and_the_next_is_stored(store_url: str) -> None:
    """PostgreSQL: the database ends the connection a single POST's write takes from the pool (a restart, an
    administrator): the POST answers 503 (retry), nothing half-written stays, and the next POST is stored."""
    if not store_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's connections")
    import psycopg

    from sensorthings.service import ApiRequest, Service
    from sensorthings.store.base import Store
    from sensorthings.store.postgres import libpq_url

    store = Store.open(store_url)
    service = Service(store)
    admin = libpq_url(store_url)
    try:
        ds = placed_stream(service, "OM_Measurement")

        def post(result: float) -> int:
            body = orjson.dumps({"result": result, "Datastream": {"@iot.id": ds}})
            return service.handle(ApiRequest("POST", "Observations", {}, body, "http://x/v1.1")).status

        assert post(1) == 201
        with psycopg.connect(admin, autocommit=True) as conn:  # every pooled connection ended
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert post(2) == 503
        assert post(3) == 201
        got = service.call("GET", f"Datastreams({ds})/Observations", **{"$orderby": "result"})["value"]
        assert [o["result"] for o in got] == [1, 3]
    finally:
        store.close()


def test_a_row_the_database_refuses_is_an_integrity_error_on_every_write_path(store_url: str) -> None:
    """The writes run on the driver's own connection (COPY, one JSON array, a pipeline) raise what SQLAlchemy raises
    for every other statement, which is what the writer, the bridge and HTTP tell apart (a refused row from a
    database gone); a driver's own error class escaped them all."""
    from sqlalchemy.exc import IntegrityError

    from sensorthings.service import Service
    from sensorthings.store import observations
    from sensorthings.store.base import Store
    from sensorthings.times import parse_instant

    store = Store.open(store_url)
    service = Service(store)
    try:
        thing = service.call("POST", "Things", {
            "name": "t", "description": "d",
            "Datastreams": [{"name": "s", "description": "d", "observationType": OM + "OM_Measurement",
                             "unitOfMeasurement": UNIT,
                             "Sensor": {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
                             "ObservedProperty": {"name": "p", "definition": "d", "description": "d"}}]})
        ds = service.call("GET", f"Things({thing['@iot.id']})/Datastreams")["value"][0]["@iot.id"]
        row = observations.ObservationRow.of(1.0, phenomenon_time_start=parse_instant("2026-01-01T00:00Z"),
                                             datastream_id=ds, feature_of_interest_id=999_999).columns()
        bound = store.bind_observation(row)
        paths = [(store.bulk_insert, bound)]
        used: list[Any] = []
        if store.engine.dialect.name == "postgresql":
            paths.append((lambda conn, rows: observations._insert_widening(conn, rows, False), row))

            def at_once(conn: Any, rows: list[Any]) -> None:
                used.append(conn.connection.driver_connection)
                inserted_at_once(conn, rows)

            paths.append((at_once, row))
        for insert, given in paths:
            with pytest.raises(IntegrityError), store.write() as (conn, _changes):  # no such FeatureOfInterest
                insert(conn, [given, given])
        assert service.call("GET", f"Datastreams({ds})/Observations")["value"] == []
        for db in used:  # the connection the refused pipeline ran on is as it was: no transaction, no autocommit
            assert not db.autocommit and db.info.transaction_status.name == "IDLE"
        service.call("POST", "Observations", {"result": 1, "Datastream": {"@iot.id": ds}, "FeatureOfInterest": {
            "name": "f", "description": "d", "encodingType": "application/geo+json",
            "feature": {"type": "Point", "coordinates": [10, 53]}}})
        assert len(service.call("GET", f"Datastreams({ds})/Observations")["value"]) == 1
    finally:
        store.close()


def test_every_kind_of_value_comes_back_whole_from_a_bulk_write(store_url: str) -> None:
    """40 rows (PostgreSQL: one COPY in its binary format, each value written by its column's type) of an
    OM_Observation Datastream: results of every JSON kind, text with quotes, tabs and non-ASCII, resultQuality,
    parameters, validTime and resultTime come back as they were sent."""
    from sensorthings.service import Service
    from sensorthings.store.base import Store
    from sensorthings.store.observations import ObservationRow
    from sensorthings.times import parse_instant

    store = Store.open(store_url)
    service = Service(store)
    try:
        ds = placed_stream(service, "OM_Observation")
        results = [1.5, -7, 10**15, "plain", 'quotes " and \\ back\tslash, tab\nline, Zürich 서울', True, False,
                   {"nested": {"list": [1, "two", None, 3.25]}, "é": "ü"}, [1, [2, [3]]], "", 0, {"": None}]
        sent = []
        for i in range(40):
            result = results[i % len(results)]
            sent.append({"result": result, "resultQuality": {"flag": i % 2 == 0, "note": "ok\t✓"},
                         "parameters": {"i": i, "tags": ["a", "ß"]},
                         "validTime": f"2026-04-01T00:{i:02d}:00Z/2026-04-01T01:{i:02d}:00Z",
                         "resultTime": f"2026-04-02T00:{i:02d}:00.123456Z"})
        rows = [ObservationRow.of(
            s["result"], phenomenon_time_start=parse_instant(f"2026-04-01T00:{i:02d}:00Z"),
            result_time=parse_instant(s["resultTime"]), result_quality=s["resultQuality"], parameters=s["parameters"],
            valid_time_start=parse_instant(s["validTime"].split("/")[0]),
            valid_time_end=parse_instant(s["validTime"].split("/")[1]), datastream_id=ds) for i, s in enumerate(sent)]
        ids = store.writer.write(rows).ids
        for id_, s in zip(ids, sent, strict=True):
            got = service.call("GET", f"Observations({id_})")
            assert {k: got[k] for k in s} == s, (got, s)
    finally:
        store.close()
