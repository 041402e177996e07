"""Signing in to the cockpit: anonymous visitors see the public collections and sensors; after signing in (HTTP
Basic, kept in sessionStorage) the internal ones appear without a page reload, and go again after signing out.

Like tests/test_cockpit.py, this needs Debian's `chromium` and `chromium-driver` and the `selenium` package
(tests/browser.py); without them it skips with the reason. It asks the map what it draws as that module does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import chrome, need_browser
from tests.conftest import DEMO_DATA, Server, serve_config_file, wait_until
from tests.test_cockpit import _drawn, _jump, _marker, _rendered

READER = ("reader", "reader-password-1")
WRITER = ("ingest", "ingest-password-1")
CONFIG = f"""title: Sign-in test
auth:
  users:
    - name: {READER[0]}
      password: {READER[1]}
      roles: [read]
    - name: {WRITER[0]}
      password: {WRITER[1]}
      roles: [write]
collections:
  bikes:
    title: Bike-share stations
    source: {DEMO_DATA / 'ttareungyi_bike_stations.csv'}
    x: longitude
    y: latitude
  cctv:
    title: CCTV sites (internal)
    source: {DEMO_DATA / 'gangnam_cctv_locations.csv'}
    x: longitude
    y: latitude
    access: internal
sensors:
  - things: public.csv
    x: lon
    y: lat
    key: id
    name: "public {{id}}"
    datastreams:
      - name: "count {{id}}"
        observedProperty: count
        unit: {{name: count, symbol: "{{count}}", definition: ucum}}
        observationType: OM_CountObservation
  - things: internal.csv
    x: lon
    y: lat
    key: id
    name: "internal {{id}}"
    access: internal
    datastreams:
      - name: "count {{id}}"
        observedProperty: count
        unit: {{name: count, symbol: "{{count}}", definition: ucum}}
        observationType: OM_CountObservation
"""


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The platform with `auth:`, a public and an internal collection, a public and an internal sensor."""
    need_browser()
    tmp = tmp_path_factory.mktemp("cockpit-signin")
    (tmp / "public.csv").write_text("id,lon,lat\npub1,127.03,37.50\n", encoding="utf-8")
    (tmp / "internal.csv").write_text("id,lon,lat\nsec1,127.04,37.51\n", encoding="utf-8")
    (tmp / "config.yml").write_text(CONFIG, encoding="utf-8")
    yield from serve_config_file(tmp)


def _ready(driver: Any) -> None:
    wait_until(lambda: driver.execute_script("return document.body.dataset.ready") == "true", 30, "the cockpit loads")


def _layers(driver: Any) -> set[str]:
    return {li.get_attribute("data-collection") for li in driver.find_elements("css selector", "#layer-list li")}


def _marked(driver: Any) -> set[int]:
    """The Datastreams the sensor markers drawn on the map stand for."""
    return {int(i) for f in _rendered(driver, "sensors") for i in f["properties"]["datastreams"].split()}


def _searchable(driver: Any) -> set[str]:
    return {o.get_attribute("value") for o in driver.find_elements("css selector", "#find-list option")}


def _sign_in(driver: Any, name: str, password: str) -> None:
    toggle = driver.find_element("id", "sign-in-toggle")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
        assert driver.switch_to.active_element == driver.find_element("id", "sign-in-name")  # focus moves in
    assert driver.find_element("id", "sign-in-form").is_displayed()
    for field, value in (("sign-in-name", name), ("sign-in-password", password)):
        box = driver.find_element("id", field)
        box.clear()
        box.send_keys(value)
    driver.find_element("id", "sign-in-submit").click()


def _datasets(driver: Any) -> set[str]:
    """The Data page's datasets (the catalogue's records)."""
    return {li.get_attribute("data-record") for li in driver.find_elements("css selector", "#data-results > li")}


def _storage(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return {session: {...sessionStorage}, local: localStorage.length}")


def _severe_but_401(driver: Any) -> list[str]:
    """SEVERE console messages, without the 401s the wrong password is answered with."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not re.search(r"/v1\.1/? .*\b401\b", e["message"])]


def test_signing_in_shows_the_internal_collection_and_sensor(city: Server) -> None:
    streams = {s["name"]: s["@iot.id"] for s in
               httpx.get(f"{city.sta}/Datastreams", auth=READER, timeout=30).json()["value"]}
    public, internal = streams["count pub1"], streams["count sec1"]
    driver = chrome(1280, 800)
    try:
        # anonymous: the public collection and sensor only, no console errors
        driver.get(f"{city.url}/cockpit/")
        _ready(driver)
        assert "bikes" in _layers(driver) and "cctv" not in _layers(driver)
        assert public in _marked(driver) and internal not in _marked(driver)
        assert _searchable(driver) == {"public pub1"}
        assert driver.find_element("id", "sign-in-toggle").text == "Sign in"
        assert driver.find_element("id", "account-status").text == ""
        assert _severe_but_401(driver) == []
        search = driver.find_element("id", "find")
        search.send_keys("internal sec1\n")
        wait_until(lambda: "No sensor is named like" in driver.find_element("id", "map-note").text, 5, "not found")
        assert not driver.find_element("id", "details").is_displayed()

        # a wrong password: the platform's 401 message, in a live region; nothing kept
        _sign_in(driver, READER[0], "not-the-password")
        error = driver.find_element("id", "sign-in-error")
        wait_until(lambda: "wrong password" in error.text, 10, "the error is shown")
        assert "401" in error.text and error.get_attribute("aria-live") == "assertive"
        assert driver.find_element("id", "sign-in-password").get_attribute("aria-invalid") == "true"
        assert driver.execute_script("return document.body.dataset.user") is None
        assert _storage(driver) == {"session": {}, "local": 0}
        assert "cctv" not in _layers(driver)
        assert "bikes" in _datasets(driver) and "cctv" not in _datasets(driver)

        # the right one: the internal collection and sensor appear, without a page reload
        driver.execute_script("window.sameDocument = true")
        _sign_in(driver, *READER)
        wait_until(lambda: driver.execute_script("return document.body.dataset.user") == READER[0], 10, "signed in")
        wait_until(lambda: "cctv" in _layers(driver) and internal in _marked(driver), 15, "the internal data appears")
        _ready(driver)
        assert driver.execute_script("return window.sameDocument") is True
        assert not driver.find_element("id", "sign-in-form").is_displayed()
        assert driver.find_element("id", "account-status").text == f"Signed in as {READER[0]}"
        assert driver.find_element("id", "sign-out").is_displayed()
        assert not driver.find_element("id", "sign-in-toggle").is_displayed()
        assert {public, internal} <= _marked(driver)
        assert _searchable(driver) == {"public pub1", "internal sec1"}
        assert {"bikes", "cctv"} <= _datasets(driver)  # the catalogue as the read role sees it
        stored = _storage(driver)
        assert stored["local"] == 0 and list(stored["session"]) == ["udp.cockpit.signIn"]
        # the internal layer's tiles are read with the credentials: at zoom 2 Gangnam's 1,763 CCTV sites are in one
        # tile, far from its edges, each drawn once or counted in a point standing for several (`point_count`)
        driver.find_element("id", "layer-cctv").click()
        _jump(driver, 127.05, 37.5, 2)
        wait_until(lambda: sum(f["properties"].get("point_count", 1) for f in _drawn(driver, "cctv")) == 1763, 15,
                   "the internal layer's features")
        # and the search finds the internal sensor
        search = driver.find_element("id", "find")
        search.clear()
        search.send_keys("internal sec1\n")
        wait_until(lambda: driver.find_element("id", "details").is_displayed()
                   and driver.find_element("id", "details-heading").text == "internal sec1", 10, "its panel")
        wait_until(lambda: driver.find_elements("css selector", f"#details td[data-datastream='{internal}']"), 10,
                   "its Datastreams")

        # internal Observations are not announced over MQTT: the cockpit polls them while signed in (every 10 s)
        r = httpx.post(f"{city.sta}/Datastreams({internal})/Observations", json={"result": 4321}, auth=WRITER)
        assert r.status_code == 201, r.text
        cell = f"#details td[data-datastream='{internal}'] .value"
        # (the panel's table is drawn again as readings arrive: an element found may be gone when asked)
        from selenium.common.exceptions import StaleElementReferenceException

        wait_until(lambda: driver.find_element("css selector", cell).get_attribute("data-value") == "4321", 15,
                   "the internal reading shown by polling", ignore=(StaleElementReferenceException,))
        assert _marker(driver, internal)["value"] == 4321

        # a page reload keeps the sign-in (sessionStorage, this tab)
        driver.refresh()
        _ready(driver)
        assert driver.execute_script("return document.body.dataset.user") == READER[0]
        assert "cctv" in _layers(driver) and internal in _marked(driver)

        # signing out: they go again, and nothing is kept
        driver.find_element("id", "sign-out").click()
        wait_until(lambda: driver.execute_script("return document.body.dataset.user") is None, 5, "signed out")
        wait_until(lambda: "cctv" not in _layers(driver) and internal not in _marked(driver), 15,
                   "the internal data goes")
        _ready(driver)
        assert "bikes" in _layers(driver) and public in _marked(driver)
        assert _searchable(driver) == {"public pub1"}
        assert "bikes" in _datasets(driver) and "cctv" not in _datasets(driver)
        assert driver.find_element("id", "sign-in-toggle").is_displayed()
        assert driver.switch_to.active_element == driver.find_element("id", "sign-in-toggle")
        assert _storage(driver) == {"session": {}, "local": 0}
        # credentials never went into a URL
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and not any(READER[1] in u or "reader:" in u for u in urls)
        assert _severe_but_401(driver) == []
    finally:
        driver.quit()
