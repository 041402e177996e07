"""Citizen feedback on both stores: anyone sends an item (OGC API Features Part 4 POST), it stays hidden until a
moderator publishes it, the public never sees the contact, moderators answer; roles, the area join, every bad
input with its reason, the rate limit, text kept as sent, and the MQTT announcements."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, serve_on
from tests.test_mqtt import Listener

MODERATOR = ("moderator", "moderator-password")
WRITER = ("ingest", "ingest-password")
ADMIN = ("operator", "operator-password")
CONFIG = """title: Feedback city
auth:
  trusted_proxies: [127.0.0.1/32]
  users:
    - {name: moderator, password: moderator-password, roles: [moderate]}
    - {name: ingest, password: ingest-password, roles: [write]}
    - {name: operator, password: operator-password, roles: [admin]}
collections:
  districts:
    source: districts.geojson
    id: code
    style: {label: name}
feedback:
  title: Tell the city
  categories: [road damage, litter, street lighting, idea]
  areas: districts
  rate: 5/minute
"""
WEST = [[9.90, 53.50], [9.95, 53.50], [9.95, 53.60], [9.90, 53.60], [9.90, 53.50]]
EAST = [[9.95, 53.50], [10.00, 53.50], [10.00, 53.60], [9.95, 53.60], [9.95, 53.50]]


def write_districts(tmp: Path) -> None:
    """districts.geojson: Altona (W) and Eimsbüttel (E), two squares side by side."""
    (tmp / "districts.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"code": code, "name": name},
         "geometry": {"type": "Polygon", "coordinates": [ring]}}
        for code, name, ring in (("W", "Altona", WEST), ("E", "Eimsbüttel", EAST))]}), encoding="utf-8")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def city(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("feedback")
    write_districts(tmp)
    (tmp / "config.yml").write_text(CONFIG, encoding="utf-8")
    yield from serve_on(request.param, tmp_path_factory, ["--config", str(tmp / "config.yml")])


_clients = iter(range(1, 10_000))


def citizen() -> dict[str, str]:
    """A citizen of their own address (behind the trusted proxy), so that each test meets the rate limit alone."""
    return {"X-Forwarded-For": f"10.0.{next(_clients) // 250}.{next(_clients) % 250 + 1}"}


def item(lon: float = 9.92, lat: float = 53.55, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"category": "road damage", "text": "A pothole", **props}}


def items_url(city: Server) -> str:
    return f"{city.url}/ogcapi/collections/feedback/items"


def send(city: Server, body: Any, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(items_url(city), content=content, headers={"Content-Type": "application/geo+json",
                                                                 **(headers or citizen())}, timeout=30, **kw)


def listed(city: Server, **kw: Any) -> dict[Any, dict[str, Any]]:
    r = httpx.get(items_url(city), params={"limit": 1000}, timeout=30, **kw)
    assert r.status_code == 200, r.text
    return {f["id"]: f for f in r.json()["features"]}


def test_anyone_sends_an_item_hidden_until_a_moderator_publishes_it(city: Server) -> None:
    r = send(city, item(contact="anna@example.org", about="districts/W"))
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    assert r.headers["location"].endswith(f"/ogcapi/collections/feedback/items/{fid}")
    assert r.json()["properties"]["status"] == "received" and r.json()["properties"]["area"] == "Altona"
    assert fid not in listed(city)  # the public sees it only once published
    assert httpx.get(f"{items_url(city)}/{fid}", timeout=30).status_code == 404
    seen = listed(city, auth=MODERATOR)[fid]["properties"]
    assert seen["contact"] == "anna@example.org" and seen["status"] == "received"
    r = httpx.patch(f"{items_url(city)}/{fid}", json={"status": "published"}, auth=MODERATOR, timeout=30)
    assert r.status_code == 200 and r.json()["properties"]["status"] == "published", r.text
    public = listed(city)[fid]["properties"]
    assert public["text"] == "A pothole" and public["area"] == "Altona" and public["about"] == "districts/W"
    assert "contact" not in public and "client" not in public
    assert public["created"] and public["answered"] is None
    # answered: the response, its department and time
    r = httpx.patch(f"{items_url(city)}/{fid}", auth=MODERATOR, timeout=30,
                    json={"status": "answered", "response": "Repaired on Monday", "department": "Roads"})
    assert r.status_code == 200, r.text
    public = httpx.get(f"{items_url(city)}/{fid}", timeout=30).json()["properties"]
    assert (public["status"], public["response"], public["department"]) == ("answered", "Repaired on Monday",
                                                                            "Roads")
    assert public["answered"] >= public["created"]
    # a status can only move on as the workflow says
    r = httpx.patch(f"{items_url(city)}/{fid}", json={"status": "received"}, auth=MODERATOR, timeout=30)
    assert r.status_code == 409 and "can become" in r.json()["description"]


def test_the_categories_and_statuses_are_in_the_queryables_and_the_schema(city: Server) -> None:
    """A form (the cockpit's) offers the categories the server takes, read from the collection's own documents."""
    for doc in ("queryables", "schema"):
        r = httpx.get(f"{city.url}/ogcapi/collections/feedback/{doc}", params={"f": "json"}, timeout=30)
        assert r.status_code == 200, r.text
        props = r.json()["properties"]
        assert props["category"]["enum"] == ["road damage", "litter", "street lighting", "idea"], doc
        assert props["status"]["enum"] == ["received", "published", "rejected", "in progress", "answered"], doc
        assert "enum" not in props["text"] and "contact" not in props, doc


def test_moderation_takes_the_moderate_role(city: Server) -> None:
    fid = send(city, item()).json()["id"]
    url = f"{items_url(city)}/{fid}"
    assert httpx.patch(url, json={"status": "published"}, timeout=30).status_code == 401
    assert httpx.patch(url, json={"status": "published"}, auth=WRITER, timeout=30).status_code == 403
    assert httpx.delete(url, auth=WRITER, timeout=30).status_code == 403
    assert "contact" not in listed(city, auth=WRITER).get(fid, {}).get("properties", {})
    assert httpx.patch(url, json={"status": "rejected"}, auth=ADMIN, timeout=30).status_code == 200  # admin moderates
    assert fid not in listed(city)
    put = item(lon=9.97, text="A broken lamp", category="street lighting")
    put["properties"]["status"] = "published"
    r = httpx.put(url, json=put, auth=MODERATOR, timeout=30)
    assert r.status_code == 200, r.text
    public = listed(city)[fid]["properties"]
    assert (public["text"], public["category"], public["area"]) == ("A broken lamp", "street lighting", "Eimsbüttel")
    assert httpx.delete(url, auth=MODERATOR, timeout=30).status_code == 204
    assert httpx.get(url, auth=MODERATOR, timeout=30).status_code == 404
    assert httpx.delete(url, auth=MODERATOR, timeout=30).status_code == 404


def test_options_say_what_each_takes(city: Server) -> None:
    r = httpx.options(items_url(city), timeout=30)
    assert r.status_code == 204 and "POST" in r.headers["allow"]
    r = httpx.options(f"{items_url(city)}/1", timeout=30)
    assert {"PUT", "PATCH", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}
    r = httpx.options(f"{city.url}/ogcapi/collections/districts/items", timeout=30)
    assert "POST" not in r.headers["allow"]
    assert httpx.post(f"{city.url}/ogcapi/collections/districts/items", json=item(), timeout=30).status_code == 405


@pytest.mark.parametrize(("body", "reason"), [
    (item(category="graffiti"), "category: 'graffiti' is not one of"),
    ({"type": "Feature", "geometry": None, "properties": {"category": "idea", "text": "x"}}, "geometry: an item"),
    (item(lon=11.5, lat=48.1), "outside the city"),
    (item(text="x" * 2001), "text: 2,001 characters, at most 2,000"),
    (item(text=""), "text: required"),
    (b"not json", "not JSON"),
    ({"type": "FeatureCollection", "features": []}, "not a GeoJSON Feature"),
    (item(status="published"), "properties.status: not for a citizen to set"),
    (item(about="no_such_collection"), "about: 'no_such_collection' names no collection"),
    ({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [WEST]},
      "properties": {"category": "idea", "text": "all of Altona"}}, "at most 0.02°"),
])
def test_every_bad_item_is_a_400_naming_the_reason(city: Server, body: Any, reason: str) -> None:
    r = send(city, body)
    assert r.status_code == 400 and reason in r.json()["description"], r.text


def test_each_client_is_limited_to_the_rate(city: Server) -> None:
    me = citizen()
    codes = [send(city, item(), me).status_code for _ in range(5)]
    assert codes == [201] * 5
    r = send(city, item(), me)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert send(city, item(), citizen()).status_code == 201  # another client is not limited by this one
    assert send(city, item(), me, auth=WRITER).status_code == 201  # nor is a signed-in one


def test_text_is_kept_as_sent_and_never_markup(city: Server) -> None:
    text = "مرحبا بالمدينة — 도로가 파손되었습니다 <img src=x onerror=\"document.title='pwned'\"> 🚧"
    r = send(city, item(text=text, category="idea"))
    assert r.status_code == 201
    fid = r.json()["id"]
    httpx.patch(f"{items_url(city)}/{fid}", json={"status": "published"}, auth=MODERATOR, timeout=30)
    got = httpx.get(f"{items_url(city)}/{fid}", timeout=30)
    assert got.json()["properties"]["text"] == text
    assert got.headers["content-type"].startswith("application/geo+json")


def test_changes_are_announced_over_mqtt_without_the_contact(city: Server) -> None:
    listener = Listener("127.0.0.1", city.mqtt_port, ["feedback/#"])
    try:
        fid = send(city, item(contact="secret@example.org")).json()["id"]
        received = listener.wait(f"feedback/{fid}")
        assert received == {"id": fid, "status": "received"}  # no content before it is published
        httpx.patch(f"{items_url(city)}/{fid}", json={"status": "published"}, auth=MODERATOR, timeout=30)
        published = listener.wait(f"feedback/{fid}", where=lambda p: p.get("properties", {}).get("status"))
        assert published["properties"]["text"] == "A pothole" and "contact" not in published["properties"]
    finally:
        listener.close()


def test_without_moderation_items_are_public_at_once(tmp_path: Path) -> None:
    """`moderation: false`: a new item is published when sent; on a platform without accounts nobody is shown
    a contact."""
    from tests.conftest import serve_config, stop_server

    srv = serve_config(tmp_path, {"title": "Open city", "feedback": {
        "categories": ["idea"], "moderation": False, "extent": [9.0, 53.0, 11.0, 54.0]}})
    try:
        r = send(srv, {"type": "Feature", "geometry": {"type": "Point", "coordinates": [10.0, 53.5]},
                       "properties": {"category": "idea", "text": "More trees", "contact": "me@example.org"}})
        assert r.status_code == 201 and r.json()["properties"]["status"] == "published", r.text
        shown = listed(srv)[r.json()["id"]]["properties"]
        assert shown["text"] == "More trees" and "contact" not in shown
    finally:
        stop_server(srv)


def test_staff_edit_as_qgis_does(city: Server) -> None:
    """The requests QGIS 3.32+ sends to edit an OGC API Features layer (Part 4): OPTIONS on the items and on an
    item for what is allowed; POST a new Feature and read its Location; PATCH a merge patch of changed attributes
    and of a moved geometry; PUT a whole Feature; DELETE."""
    staff = httpx.Client(base_url=items_url(city), auth=MODERATOR, timeout=30)
    allow = {m.strip() for m in staff.options(items_url(city)).headers["allow"].split(",")}
    assert "POST" in allow
    created = staff.post(items_url(city), content=json.dumps(item(text="Drawn in QGIS")),
                         headers={"Content-Type": "application/geo+json"})
    assert created.status_code == 201, created.text
    fid = created.headers["location"].rsplit("/", 1)[1]
    assert {"PUT", "PATCH", "DELETE"} <= {m.strip() for m in staff.options(f"/{fid}").headers["allow"].split(",")}
    merge = {"Content-Type": "application/merge-patch+json"}
    r = staff.patch(f"/{fid}", content=json.dumps({"properties": {"category": "litter", "status": "published"}}),
                    headers=merge)
    assert r.status_code == 200 and r.json()["properties"]["category"] == "litter", r.text
    r = staff.patch(f"/{fid}", content=json.dumps({"geometry": {"type": "Point", "coordinates": [9.97, 53.55]}}),
                    headers=merge)
    assert r.status_code == 200 and r.json()["geometry"]["coordinates"] == [9.97, 53.55], r.text
    assert r.json()["properties"]["area"] == "Eimsbüttel"  # the area follows the place
    whole = item(lon=9.93, text="Redrawn", category="idea")
    r = staff.put(f"/{fid}", content=json.dumps(whole), headers={"Content-Type": "application/geo+json"})
    assert r.status_code == 200, r.text
    props = r.json()["properties"]
    assert (props["text"], props["category"], props["area"], props["status"]) == ("Redrawn", "idea", "Altona",
                                                                                  "published")
    assert staff.delete(f"/{fid}").status_code == 204
    assert staff.get(f"/{fid}").status_code == 404


def test_accountability_indicators_per_area_and_for_the_city(city: Server) -> None:
    """Items received, items answered and the median time to answer, over the last 30 days, served like every
    indicator: a collection with a feature per area, and SensorThings Datastreams per area and for the city."""
    import time

    fid = send(city, item(lon=9.97, category="litter")).json()["id"]
    for change in ({"status": "published"}, {"status": "answered", "response": "Collected"}):
        assert httpx.patch(f"{items_url(city)}/{fid}", json=change, auth=MODERATOR, timeout=30).status_code == 200
    everything = listed(city, auth=MODERATOR).values()

    def expected(area: str) -> tuple[float, float]:
        mine = [f for f in everything if f["properties"]["area"] == area]
        return float(len(mine)), float(sum(1 for f in mine if f["properties"]["status"] == "answered"))

    def values(indicator: str) -> dict[str, Any]:
        r = httpx.get(f"{city.url}/ogcapi/collections/{indicator}/items", timeout=30)
        return {f["properties"]["area"]: f["properties"]["value"] for f in r.json()["features"]} \
            if r.status_code == 200 else {}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        received, answered = values("feedback-received"), values("feedback-answered")
        if (received.get("Eimsbüttel"), answered.get("Eimsbüttel")) == expected("Eimsbüttel") and \
                (received.get("Altona"), answered.get("Altona")) == expected("Altona"):
            break
        time.sleep(0.5)
    assert (received.get("Eimsbüttel"), answered.get("Eimsbüttel")) == expected("Eimsbüttel"), received
    assert (received.get("Altona"), answered.get("Altona")) == expected("Altona"), received
    median = values("feedback-time-to-answer")["Eimsbüttel"]
    assert median is not None and 0 <= median < 1  # answered within the test: a fraction of an hour
    sta = httpx.get(f"{city.url}/v1.1/Datastreams", params={
        "$filter": "properties/indicator eq 'feedback-received'", "$expand": "Observations($top=1;"
        "$orderby=phenomenonTime desc)"}, timeout=30).json()["value"]
    by_area = {d["properties"]["area"]: d["Observations"][0]["result"] for d in sta if d["Observations"]}
    assert by_area["city"] == sum(expected(a)[0] for a in ("Altona", "Eimsbüttel"))


def test_me_says_who_asks_and_what_they_may_do(city: Server) -> None:
    """/me, for an interface to show what a user may do (the cockpit's moderation queue)."""
    def me(**kw: Any) -> dict[str, Any]:
        r = httpx.get(f"{city.url}/me", timeout=30, **kw)
        assert r.status_code == 200 and "no-store" in r.headers["cache-control"]
        return r.json()

    # (`read` is the role that sees internal data: anyone reads the public)
    assert me() == {"name": None, "roles": [], "may": {"read": False, "write": False, "moderate": False},
                    "accounts": True, "oidc": None}
    moderator = me(auth=MODERATOR)
    assert moderator["name"] == "moderator" and moderator["may"] == {"read": True, "write": False, "moderate": True}
    assert me(auth=WRITER)["may"] == {"read": True, "write": True, "moderate": False}
    assert me(auth=ADMIN)["may"] == {"read": True, "write": True, "moderate": True}
