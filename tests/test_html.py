"""The platform's HTML face: the OGC API pages from the platform's own templates, offline in headless Chromium (no
request leaves the platform, no console error), the maps drawn by MapLibre from the platform's own tiles, the
publisher and contact from config.yml. Needs Debian's `chromium` and `chromium-driver` (else skipped)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import chrome, need_browser, severe
from tests.conftest import DEMO_DATA, Server, serve_config, stop_server, wait_until

CDN = re.compile(r"https?://(?!127\.0\.0\.1)[a-z0-9.-]+\.(com|org|io|net)/[^\s\"']*\.(js|css|png)")


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("html")
    srv = serve_config(tmp, {
        "title": "Seoul test city <&>",
        "publisher": {"name": "Seoul Metropolitan Government", "url": "https://www.seoul.go.kr"},
        "contact": {"name": "Open data desk", "email": "data@seoul.example"},
        "collections": {
            "districts": {"title": "Seoul districts", "source": str(DEMO_DATA / "seoul_municipalities.shp"),
                          "encoding": "cp949", "crs": "EPSG:5174", "id": "code",
                          "style": {"colour": "#6d28d9"}},
            "bikes": {"title": "Bike-share stations", "source": str(DEMO_DATA / "ttareungyi_bike_stations.csv"),
                      "x": "longitude", "y": "latitude"}}})
    try:
        yield srv
    finally:
        stop_server(srv)


PAGES = ["/?f=html", "/ogcapi/?f=html", "/ogcapi/collections?f=html", "/ogcapi/collections/districts?f=html",
         "/ogcapi/collections/bikes/items?f=html&limit=50", "/ogcapi/collections/districts/items/11230?f=html",
         "/ogcapi/collections/districts/queryables?f=html", "/ogcapi/conformance?f=html", "/ogcapi/openapi?f=html",
         "/ogcapi/collections/catalogue/items?f=html"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_use_the_platforms_own_assets(city: Server, path: str) -> None:
    r = httpx.get(city.url + path, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not CDN.findall(r.text), CDN.findall(r.text)[:3]
    assert "pygeoapi.png" not in r.text and "bootstrap" not in r.text
    assert "Seoul test city &lt;&amp;&gt;" in r.text and "<&>" not in r.text  # the title escaped
    assert "data@seoul.example" in r.text and "Seoul Metropolitan Government" in r.text


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    need_browser()
    driver = chrome(1200, 900)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.parametrize("path, drawn", [
    ("/ogcapi/collections/districts?f=html", "districts"),
    ("/ogcapi/collections/bikes/items?f=html&limit=50", "bikes"),
    ("/ogcapi/collections/districts/items/11230?f=html", "districts"),
    ("/ogcapi/collections/catalogue/items?f=html", None),
])
def test_maps_draw_the_platforms_tiles_offline(city: Server, browser: Any, path: str, drawn: str | None) -> None:
    browser.get_log("browser")  # what earlier pages logged
    browser.get(city.url + path)
    wait_until(lambda: browser.execute_script(
        "const m = document.querySelector('[data-udp-map]'); return m && (m.dataset.ready || m.dataset.error)"),
        30, f"the map of {path}")
    assert browser.execute_script("return document.querySelector('[data-udp-map]').dataset.error") is None
    layers = browser.execute_script(
        "return [...new Set(window.udpMaps[0].queryRenderedFeatures().map(f => f.sourceLayer || f.source))]")
    if drawn:
        assert drawn in layers  # from the collection's vector tiles
    if "/items" in path:
        assert "page" in layers  # the page's own features on top
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) == {city.url}, set(origins)
    assert severe(browser) == []


def test_the_api_page_lists_the_operations(city: Server, browser: Any) -> None:
    browser.get(city.url + "/ogcapi/openapi?f=html")
    wait_until(lambda: browser.execute_script("return !document.getElementById('operations').hidden"), 15,
               "the operations")
    rows = browser.find_elements("css selector", "#operations tbody tr")
    assert any("/collections/{collectionId}/items" in r.text or "/collections/bikes/items" in r.text for r in rows)
