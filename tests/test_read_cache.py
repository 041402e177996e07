"""The response cache under writes, across worker processes: `udp serve --workers 2` on each store, real HTTP.

A write seen by one worker's clients is seen at once by the other's (no read after a committed write
is stale), and a write to one table leaves the cached answers read from other tables in place (the
worker's hit counter in /health shows it, no timing involved).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Server, serve_on, unique

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
NEWEST = {"$orderby": "phenomenonTime desc", "$top": "5"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers on a fresh store."""
    yield from serve_on(request.param, tmp_path_factory, ["--workers", "2"])


def worker(client: httpx.Client) -> int:
    """The process id of the worker that serves this client's connection."""
    return client.get("/health").json()["worker"]


def hits(client: httpx.Client) -> int:
    """Cache hits so far on the worker that serves this client."""
    return client.get("/health").json()["response_cache"]["hits"]


@pytest.fixture
def clients(server: Server) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Two clients, each on one kept-alive connection, served by different workers."""
    opened: list[httpx.Client] = []
    try:
        by_worker: dict[int, httpx.Client] = {}
        for _ in range(200):  # the kernel hands each new connection to either worker
            client = httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=1))
            opened.append(client)
            by_worker.setdefault(worker(client), client)
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, "every connection went to one worker"
        yield tuple(by_worker.values())  # type: ignore[misc]
    finally:
        for client in opened:
            client.close()


def sta_get(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> Any:
    r = client.get(f"/v1.1/{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def station(name: str, streams: int = 1, observed: bool = True) -> dict[str, Any]:
    """A Thing to POST: a Location and `streams` numeric Datastreams (ds0, ds1, …), each with one Observation
    of 2024-01-01 unless not `observed`."""
    return {"name": name, "description": "d",
            "Locations": [{"name": "l", "description": "", "encodingType": "application/geo+json",
                           "location": {"type": "Point", "coordinates": [10, 53]}}],
            "Datastreams": [{"name": f"ds{k}", "description": "d", "observationType": OM,
                             "unitOfMeasurement": {"name": "u", "symbol": "u", "definition": "u"},
                             "Sensor": {"name": "s", "description": "d", "encodingType": "text/html",
                                        "metadata": "m"},
                             "ObservedProperty": {"name": "p", "definition": "p", "description": "d"},
                             **({"Observations": [{"phenomenonTime": "2024-01-01T00:00:00Z", "result": 1}]}
                                if observed else {})}
                            for k in range(streams)]}


def test_a_write_is_seen_by_the_other_worker_and_spares_other_tables(
        clients: tuple[httpx.Client, httpx.Client]) -> None:
    reader, writer = clients
    pid = worker(reader)
    name = unique("cached")
    made = writer.post("/v1.1/Things", json=station(name))
    assert made.status_code == 201, made.text
    ds = sta_get(writer, f"Things({made.json()['@iot.id']})/Datastreams")["value"][0]["@iot.id"]
    reads = {"things": ("Things", {"$top": "100"}), "chart": (f"Datastreams({ds})/Observations", NEWEST),
             "newest": ("Observations", NEWEST)}
    for path, params in reads.values():  # the reader's worker caches each answer
        sta_get(reader, path, params)
    before = {key: sta_get(reader, path, params) for key, (path, params) in reads.items()}
    assert name in [t["name"] for t in before["things"]["value"]]

    # an Observation written through the other worker
    posted = writer.post("/v1.1/Observations", json={"phenomenonTime": "2024-02-01T00:00:00Z", "result": 42,
                                                     "Datastream": {"@iot.id": ds}})
    assert posted.status_code == 201, posted.text
    new_id = posted.json()["@iot.id"]
    counted = hits(reader)
    assert sta_get(reader, *reads["things"]) == before["things"]
    assert hits(reader) == counted + 1  # the Things were not read again: Observations are not Things
    assert sta_get(reader, *reads["chart"])["value"][0]["@iot.id"] == new_id
    assert sta_get(reader, *reads["newest"])["value"][0]["@iot.id"] == new_id
    assert hits(reader) == counted + 1  # both read afresh

    # a Thing renamed through the other worker: the Things are read afresh
    assert writer.patch(f"/v1.1/Things({made.json()['@iot.id']})", json={"name": name + "!"}).status_code == 200
    assert name + "!" in [t["name"] for t in sta_get(reader, *reads["things"])["value"]]
    assert hits(reader) == counted + 1
    # a Sensor renamed: the Observations (read with the Things and Datastreams that may hide them) stay cached
    sta_get(reader, *reads["chart"])
    sensor = sta_get(writer, f"Datastreams({ds})/Sensor")["@iot.id"]
    assert writer.patch(f"/v1.1/Sensors({sensor})", json={"name": "renamed"}).status_code == 200
    counted = hits(reader)
    sta_get(reader, *reads["chart"])
    assert hits(reader) == counted + 1
    assert sta_get(reader, f"Datastreams({ds})/Sensor")["name"] == "renamed"

    # a cascade: deleting the Datastream deletes its Observations, and the reader sees both at once
    assert writer.delete(f"/v1.1/Datastreams({ds})").status_code == 200
    assert reader.get(f"/v1.1/Datastreams({ds})/Observations", params=NEWEST).status_code == 404
    assert new_id not in [o["@iot.id"] for o in sta_get(reader, *reads["newest"])["value"]]
    assert worker(reader) == pid  # one worker answered the reader throughout


def test_health_says_where_a_workers_reads_spent_their_time(clients: tuple[httpx.Client, httpx.Client]) -> None:
    """`/health` `reads` (sensorthings.http.read_waits): every GET counted, each one's versions read on the event
    loop, the first reading of an answer computed in a thread, and after another worker's write computed again
    (inline or in a thread); the seconds only grow."""
    reader, writer = clients
    made = writer.post("/v1.1/Things", json=station(unique("waits")))
    assert made.status_code == 201, made.text
    ds = sta_get(writer, f"Things({made.json()['@iot.id']})/Datastreams")["value"][0]["@iot.id"]
    chart = (f"Datastreams({ds})/Observations", {**NEWEST, "$select": "id,result"})

    def reads() -> dict[str, Any]:
        return reader.get("/health").json()["reads"]

    before = reads()
    for _ in range(5):
        sta_get(reader, *chart)
    after = reads()
    assert after["gets"] == before["gets"] + 5
    assert after["versions"] == before["versions"] + 5
    assert after["thread"] == before["thread"] + 1  # the first of them: a key never computed is not computed inline
    assert after["versions_s"] > before["versions_s"]
    assert after["thread_s"] > before["thread_s"]

    posted = writer.post("/v1.1/Observations", json={"phenomenonTime": "2024-03-01T00:00:00Z", "result": 7,
                                                     "Datastream": {"@iot.id": ds}})
    assert posted.status_code == 201, posted.text
    assert sta_get(reader, *chart)["value"][0]["@iot.id"] == posted.json()["@iot.id"]
    last = reads()
    assert last["gets"] == after["gets"] + 1
    assert last["inline"] + last["thread"] == after["inline"] + after["thread"] + 1  # computed again
    assert all(last[k] >= after[k] for k in last)


def test_a_chart_stays_cached_while_other_datastreams_are_written(
        clients: tuple[httpx.Client, httpx.Client]) -> None:
    """A read confined to one Datastream's Observations depends on that Datastream's row and Observations only:
    devices writing to other Datastreams (which widens those Datastreams' times) leave it cached, a write to its
    own Datastream, to its row or an Observation moved to it reaches it at once, through the other worker too."""
    reader, writer = clients
    made = writer.post("/v1.1/Things", json=station(unique("charts"), streams=2))
    assert made.status_code == 201, made.text
    streams = sta_get(writer, f"Things({made.json()['@iot.id']})/Datastreams")["value"]
    mine, other = sorted(d["@iot.id"] for d in streams)
    charts = [(f"Datastreams({mine})/Observations", NEWEST),
              (f"Datastreams({mine})/Observations", {**NEWEST, "$expand": "FeatureOfInterest,Datastream"})]
    first = [sta_get(reader, *chart) for chart in charts]

    def post(ds: int, when: str) -> int:
        r = writer.post(f"/v1.1/Datastreams({ds})/Observations", json={"phenomenonTime": when, "result": 2})
        assert r.status_code == 201, r.text
        return r.json()["@iot.id"]

    elsewhere = post(other, "2024-03-01T00:00:00Z")
    counted = hits(reader)
    assert [sta_get(reader, *chart) for chart in charts] == first
    assert hits(reader) == counted + 2  # neither was read again
    # reaching other Observations (through another Datastream) depends on them all: read afresh
    assert sta_get(reader, "Observations", NEWEST)["value"][0]["@iot.id"] == elsewhere

    own = post(mine, "2024-02-01T00:00:00Z")
    for chart in charts:
        assert sta_get(reader, *chart)["value"][0]["@iot.id"] == own
    # its own row changed: the expanded Datastream shows it
    assert writer.patch(f"/v1.1/Datastreams({mine})", json={"name": "renamed"}).status_code == 200
    assert sta_get(reader, *charts[1])["value"][0]["Datastream"]["name"] == "renamed"
    # an Observation moved here from the other Datastream
    assert writer.patch(f"/v1.1/Observations({elsewhere})", json={"Datastream": {"@iot.id": mine}}).status_code == 200
    assert sta_get(reader, *charts[0])["value"][0]["@iot.id"] == elsewhere
    # ... and moved away again
    assert writer.patch(f"/v1.1/Observations({elsewhere})", json={"Datastream": {"@iot.id": other}}).status_code == 200
    assert sta_get(reader, *charts[0])["value"][0]["@iot.id"] == own
    # deleted
    assert writer.delete(f"/v1.1/Observations({own})").status_code == 200
    assert own not in [o["@iot.id"] for o in sta_get(reader, *charts[0])["value"]]


def test_a_conditional_read_after_a_write_gets_the_new_answer(clients: tuple[httpx.Client, httpx.Client]) -> None:
    reader, writer = clients
    thing = writer.post("/v1.1/Things", json={"name": unique("etag"), "description": "d"}).json()["@iot.id"]
    first = reader.get(f"/v1.1/Things({thing})")
    etag = first.headers["etag"]
    assert reader.get(f"/v1.1/Things({thing})", headers={"If-None-Match": etag}).status_code == 304
    assert writer.patch(f"/v1.1/Things({thing})", json={"description": "changed"}).status_code == 200
    again = reader.get(f"/v1.1/Things({thing})", headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.json()["description"] == "changed"


def test_a_client_taking_stale_answers_gets_the_cached_one_with_its_age(
        clients: tuple[httpx.Client, httpx.Client]) -> None:
    """`Cache-Control: max-stale=N` (RFC 9111): an answer current within N seconds is given as it is, with `Age`,
    though writes came since; a client not asking, or asking `no-cache` too, gets the current answer; one
    older than N is read afresh."""
    reader, writer = clients
    made = writer.post("/v1.1/Things", json=station(unique("stale")))
    assert made.status_code == 201, made.text
    ds = sta_get(writer, f"Things({made.json()['@iot.id']})/Datastreams")["value"][0]["@iot.id"]
    path = f"/v1.1/Datastreams({ds})/Observations"
    first = reader.get(path, params=NEWEST)
    assert first.status_code == 200 and "Age" not in first.headers
    posted = writer.post("/v1.1/Observations", json={"phenomenonTime": "2024-02-01T00:00:00Z", "result": 2,
                                                     "Datastream": {"@iot.id": ds}})
    assert posted.status_code == 201, posted.text
    new_id = posted.json()["@iot.id"]

    stats = reader.get("/health").json()["response_cache"]
    stale = reader.get(path, params=NEWEST, headers={"Cache-Control": "max-stale=60"})
    assert stale.status_code == 200
    assert stale.content == first.content  # the answer from before the write, as the client allowed
    assert 0 <= int(stale.headers["Age"]) <= 60 and stale.headers["ETag"] == first.headers["ETag"]
    after = reader.get("/health").json()["response_cache"]
    assert after["stale"] == stats["stale"] + 1 and after["misses"] == stats["misses"]
    # no value: any age; a conditional request with the old tag: 304
    again = reader.get(path, params=NEWEST, headers={"Cache-Control": "max-stale",
                                                    "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and "Age" in again.headers
    for headers in ({}, {"Cache-Control": "no-cache, max-stale=60"}, {"Cache-Control": "max-stale=soon"}):
        current = reader.get(path, params=NEWEST, headers=headers)
        assert current.status_code == 200 and "Age" not in current.headers, headers
        assert current.json()["value"][0]["@iot.id"] == new_id, headers
    # found standing at the current versions just now: current again, so the next stale answer is this one
    assert reader.get(path, params=NEWEST, headers={"Cache-Control": "max-stale=60"}).content == current.content

    # too old for the client: read afresh, and the new write is in it
    writer.post("/v1.1/Observations", json={"phenomenonTime": "2024-03-01T00:00:00Z", "result": 3,
                                            "Datastream": {"@iot.id": ds}})
    time.sleep(1.1)
    fresh = reader.get(path, params=NEWEST, headers={"Cache-Control": "max-stale=1"})
    assert fresh.status_code == 200 and "Age" not in fresh.headers
    assert [o["result"] for o in fresh.json()["value"]][:3] == [3, 2, 1]


def test_opening_a_store_while_a_write_is_open_does_not_wait_for_it() -> None:
    """A process opening the store (`udp seed`, a re-import, a CLI command) while a writer's transaction is open
    neither waits for it nor deadlocks with it: the schema, its triggers and indexes are there, nothing is created
    again (creating a trigger locks its table against writers)."""
    import threading

    import psycopg

    from sensorthings.store.base import Store
    from tests.conftest import PG_URL, create_pg

    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL tests skipped")
    db = create_pg(PG_URL)
    try:
        Store.open(db.url).close()
        with psycopg.connect(db.url) as writer:  # a write in flight: its locks held until it ends
            writer.execute("INSERT INTO observed_properties (name, definition, description) VALUES ('p', 'd', 'd')")
            opened = threading.Event()

            def reopen() -> None:
                Store.open(db.url).close()
                opened.set()

            threading.Thread(target=reopen, daemon=True).start()
            assert opened.wait(15), "opening the store waited for the open write"
            writer.rollback()
    finally:
        db.drop()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_versions_read_on_the_event_loop_are_never_older_than_the_call(kind: str, tmp_path: Any) -> None:
    """The versions a cached GET is checked against on the event loop (sensorthings.store.version_watch) are read
    after the request came: a write committed before the call is in them, also while another caller's read is
    under way (callers share a read only if it started after they came)."""
    import asyncio

    from sensorthings.service import Service
    from sensorthings.store.base import Store
    from sensorthings.store.version_watch import watch
    from tests.conftest import PG_URL, create_pg

    if kind == "postgresql" and not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL tests skipped")
    db = create_pg(PG_URL) if kind == "postgresql" else None
    url = db.url if db is not None else f"sqlite:///{tmp_path / 'a city.db'}"  # read as a file URI: quoted
    store = Store.open(url)
    service = Service(store)  # another process's writes, as far as the watch can tell
    reader = watch(url)
    assert reader is not None

    async def check() -> None:
        before = (await reader.current()).get("things", 0)
        for n in range(1, 6):
            under_way = asyncio.ensure_future(reader.current())
            await asyncio.sleep(0.002)  # that read is under way, or done
            service.call("POST", "Things", {"name": unique(), "description": "d"})
            seen = await asyncio.gather(*(reader.current() for _ in range(5)))
            assert {v["things"] for v in seen} == {before + n}
            assert (await under_way).get("things", 0) in (before + n - 1, before + n)
        # SQLite keeps what it read while nothing is committed (`PRAGMA data_version`): each caller gets its own
        got = await reader.current()
        got["things"] = -1
        assert (await reader.current())["things"] == before + 5
        await reader.close()

    try:
        asyncio.run(check())
    finally:
        store.close()
        if db is not None:
            db.drop()


def new_datastream(server: Server, name: str) -> int:
    """A new Thing with a Location and one numeric Datastream: the Datastream's id."""
    with httpx.Client(base_url=server.url, timeout=60) as setup:
        made = setup.post("/v1.1/Things", json=station(unique(name), observed=False))
        assert made.status_code == 201, made.text
        return sta_get(setup, f"Things({made.json()['@iot.id']})/Datastreams")["value"][0]["@iot.id"]


def crowded(server: Server, path: str, params: dict[str, str], write: Callable[[int], None]) -> None:
    """Six readers crowd one answer (`path` with `params`) while four writers run `write(0)` … `write(3)`."""
    stop = threading.Event()

    def read() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                sta_get(client, path, params)

    readers = [threading.Thread(target=read) for _ in range(6)]
    for t in readers:
        t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
    finally:
        stop.set()
        for t in readers:
            t.join()


@pytest.mark.parametrize("expand", [
    # a heavier answer keeps computations in flight longer: more chances for a stale one to be taken
    "Datastream($expand=Thing($expand=Locations,Datastreams)),FeatureOfInterest",
    None,  # a page of Observations alone: on SQLite kept and extended by the rows written since (appended)
])
def test_reads_in_crowds_under_writes_always_show_the_readers_own_writes(server: Server, expand: str | None) -> None:
    """Readers crowd one answer that every write changes (they share its computations) while writers post:
    each writer, reading right after its 201, finds its Observation or a newer one, on either worker."""
    ds = new_datastream(server, "crowd")
    newest = {"$orderby": "id desc", "$top": "100", **({"$expand": expand} if expand else {})}
    stale: list[tuple[int, int]] = []
    checked = [0]

    def write(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for i in range(40):
                r = client.post("/v1.1/Observations", json={"phenomenonTime": f"2024-05-01T00:{k:02d}:{i:02d}Z",
                                                            "result": i, "Datastream": {"@iot.id": ds}})
                assert r.status_code == 201, r.text
                mine = r.json()["@iot.id"]
                seen = sta_get(client, "Observations", newest)["value"][0]["@iot.id"]
                checked[0] += 1
                if seen < mine:
                    stale.append((mine, seen))

    crowded(server, "Observations", newest, write)
    assert checked[0] == 160
    assert not stale, f"reads older than the reader's own write: {stale[:5]}"
    if expand is None and server.kind == "sqlite":  # the page was extended, not read whole, on some worker
        extended = {}
        for _ in range(20):
            with httpx.Client(base_url=server.url, timeout=60) as client:
                health = client.get("/health").json()
                extended[health["worker"]] = health["response_cache"]["pages"]["extended"]
        assert sum(extended.values()) > 0


def test_expanded_things_built_from_fragments_always_show_the_writers_own_writes(server: Server) -> None:
    """Readers crowd the expanded Things (an answer each worker builds again from the Things' fragments, reading
    only the Things written under: sensorthings.fragments) while four writers post, each to a Datastream of its
    own Thing: each, reading right after its 201, finds its Observation as its Datastream's newest, on either
    worker."""
    tag = unique("fragments")
    streams = [new_datastream(server, f"{tag}-{k}") for k in range(4)]
    expanded = {"$filter": f"startswith(name,'{tag}')", "$orderby": "id",
                "$expand": "Locations,Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"}
    stale: list[tuple[int, int | None]] = []
    checked = [0]

    def write(k: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for i in range(40):
                r = client.post("/v1.1/Observations", json={"phenomenonTime": f"2024-06-01T00:{i:02d}:00Z",
                                                            "result": i, "Datastream": {"@iot.id": streams[k]}})
                assert r.status_code == 201, r.text
                mine = r.json()["@iot.id"]
                things = sta_get(client, "Things", expanded)["value"]
                assert len(things) == 4
                newest = things[k]["Datastreams"][0]["Observations"]
                checked[0] += 1
                if not newest or newest[0]["@iot.id"] != mine:
                    stale.append((mine, newest[0]["@iot.id"] if newest else None))

    crowded(server, "Things", expanded, write)
    assert checked[0] == 160
    assert not stale, f"expanded Things older than the writer's own write: {stale[:5]}"
    kept = [client_health["response_cache"]["fragments"]["hits"] for client_health in
            (httpx.get(f"{server.url}/health", timeout=30).json() for _ in range(8))]
    assert max(kept) > 0, "no answer was built from kept fragments"


def test_a_burst_of_new_connections_is_spread_over_the_workers(server: Server) -> None:
    """16 connections opened at once (a load test, a proxy's pool): each worker listens on a socket of its own
    (udp.workers), so the kernel hands them to both, where one shared socket gave nearly all to one."""
    barrier = threading.Barrier(16)

    def connect(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            barrier.wait()
            return worker(client)

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(connect, range(16)))
    assert len(set(served)) == 2, served


def test_a_second_platform_on_a_taken_port_stops_instead_of_sharing_it(server: Server) -> None:
    import uvicorn

    from udp import workers

    port = int(server.url.rsplit(":", 1)[1])
    config = uvicorn.Config("udp.app:app_from_env", factory=True, host="127.0.0.1", port=port, workers=2)
    with pytest.raises(SystemExit) as stopped:
        workers.run(config)
    assert stopped.value.code == 1
    # the workers' sockets, each in the port's SO_REUSEPORT group, would have joined it without that check
    extra = workers.listening_socket("127.0.0.1", port)
    extra.close()


def test_reads_writes_and_garbage_together_give_no_server_error_and_lose_nothing(server: Server) -> None:
    """Issue 17's faults: readers, HTTP writers (single POSTs and CreateObservations with a bad row among good
    ones), malformed requests and a device publishing good and malformed Observations to the standard topic, all
    at once on two workers: no answer is a 5xx, every bad request a 4xx, and the Datastream holds exactly what
    was acknowledged."""
    import paho.mqtt.client as mqtt

    ds = new_datastream(server, "faults")
    stop = threading.Event()
    lock = threading.Lock()
    server_errors: list[str] = []
    accepted: list[float] = []  # results acknowledged as stored

    def check(r: httpx.Response, what: str) -> None:
        if r.status_code >= 500:
            with lock:
                server_errors.append(f"{what}: {r.status_code} {r.text[:200]}")

    def read() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                for params in ({"$orderby": "phenomenonTime desc", "$top": "50", "$expand": "Datastream"},
                               {"$filter": "result gt 'x' and", "$top": "5"}):  # the second is malformed: a 400
                    r = client.get("/v1.1/Observations", params=params)
                    check(r, "GET")
                    assert r.status_code in (200, 400), r.text

    def write(k: int) -> None:
        bad_bodies = [b"{not json", b'{"result": "text", "Datastream": {"@iot.id": %d}}' % ds,
                      b'{"result": 1, "Datastream": {"@iot.id": 999999999}}', b'{"result": 1}', b"[]"]
        with httpx.Client(base_url=server.url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                i += 1
                value = k * 100_000 + i
                r = client.post("/v1.1/Observations", json={"result": value, "Datastream": {"@iot.id": ds}})
                check(r, "POST")
                if r.status_code == 201:
                    with lock:
                        accepted.append(float(value))
                bad = client.post("/v1.1/Observations", content=bad_bodies[i % len(bad_bodies)],
                                  headers={"Content-Type": "application/json"})
                check(bad, "bad POST")
                assert 400 <= bad.status_code < 500, bad.text
                rows = [[f"2024-06-01T00:00:{i % 60:02d}Z", value + 0.25], ["yesterday", 5],
                        [f"2024-06-01T00:01:{i % 60:02d}Z", value + 0.5]]
                r = client.post("/v1.1/CreateObservations", json=[
                    {"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result"], "dataArray": rows}])
                check(r, "CreateObservations")
                if r.status_code == 201:
                    links = r.json()
                    assert links[1] == "error" and "error" not in (links[0], links[2]), links
                    with lock:
                        accepted.extend([value + 0.25, value + 0.5])

    def publish() -> None:
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"faults-{uuid.uuid4().hex[:6]}")
        device.connect("127.0.0.1", server.mqtt_port)
        device.loop_start()
        try:
            i = 0
            while not stop.is_set():
                i += 1
                value = 900_000 + i
                info = device.publish(f"v1.1/Datastreams({ds})/Observations", orjson.dumps({"result": value}), qos=1)
                device.publish(f"v1.1/Datastreams({ds})/Observations", b"\xff not json", qos=1)
                device.publish(f"v1.1/Datastreams({ds})/Observations", b'{"result": "text"}', qos=1)
                info.wait_for_publish(30)  # the embedded broker acknowledges after the commit
                if info.is_published():
                    with lock:
                        accepted.append(float(value))
        finally:
            device.loop_stop()
            device.disconnect()

    threads = [threading.Thread(target=read) for _ in range(3)] + [
        threading.Thread(target=write, args=(k,)) for k in (1, 2)] + [threading.Thread(target=publish)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert not server_errors, server_errors[:5]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        stored = [o["result"] for o in sta_get(client, f"Datastreams({ds})/Observations",
                                               {"$select": "result", "$top": "10000"})["value"]]
    assert len(accepted) > 50
    assert sorted(stored) == sorted(accepted)  # nothing lost, nothing stored that was refused, nothing twice
