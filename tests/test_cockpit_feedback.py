"""Citizens' feedback in the cockpit ("Tell the city"): a citizen sends a message from the map, without an account;
an officer with the moderate role publishes and answers it from the queue; the public sees the answer on the map and
in the list, live; what a citizen wrote is shown as text and never run; the queue is a moderator's only.

Like tests/test_cockpit.py, this needs Debian's `chromium` and `chromium-driver` and the `selenium` package
(tests/browser.py); without them it skips with the reason. It asks the map what it draws as that module does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import chrome, need_browser, severe
from tests.conftest import Server, serve_config_file, wait_until
from tests.test_cockpit import _click_map, _jump, _rendered
from tests.test_cockpit_signin import _ready, _sign_in
from tests.test_feedback import write_districts

MODERATOR = ("officer", "officer-password-1")
READER = ("planner", "planner-password-1")
CATEGORIES = ["road damage", "litter", "street lighting", "idea"]
CONFIG = f"""title: Feedback city
auth:
  users:
    - {{name: {MODERATOR[0]}, password: {MODERATOR[1]}, roles: [moderate]}}
    - {{name: {READER[0]}, password: {READER[1]}, roles: [read]}}
collections:
  districts:
    source: districts.geojson
    id: code
    style: {{label: name}}
feedback:
  title: Tell the city
  categories: [{", ".join(CATEGORIES)}]
  areas: districts
"""
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A platform taking feedback in two districts, with a moderator and a reader."""
    need_browser()
    tmp = tmp_path_factory.mktemp("cockpit-feedback")
    write_districts(tmp)
    (tmp / "config.yml").write_text(CONFIG, encoding="utf-8")
    yield from serve_config_file(tmp)


def _items(city: Server, auth: tuple[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The feedback items as the API answers them (the public's view, or a moderator's), by id."""
    r = httpx.get(f"{city.url}/ogcapi/collections/feedback/items", params={"limit": 1000}, auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    return {str(f["id"]): f for f in r.json()["features"]}


def _post(city: Server, text: str, lon: float = 9.93, lat: float = 53.56) -> str:
    r = httpx.post(f"{city.url}/ogcapi/collections/feedback/items", timeout=30,
                   headers={"Content-Type": "application/geo+json"},
                   content=json.dumps({"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
                                       "properties": {"category": "idea", "text": text}}))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _patch(city: Server, fid: str, change: dict[str, Any]) -> None:
    r = httpx.patch(f"{city.url}/ogcapi/collections/feedback/items/{fid}", json=change, auth=MODERATOR, timeout=30)
    assert r.status_code == 200, r.text


def _open(driver: Any, city: Server) -> None:
    """The cockpit loaded, following `feedback/#` once the broker acknowledged it (announcements before that pass
    by unseen)."""
    driver.get(f"{city.url}/cockpit/")
    _ready(driver)
    wait_until(lambda: driver.execute_script("return window.udpCockpit.state.feedbackLive") == "on", 10,
               "the cockpit following feedback/# over MQTT")


def _shown(driver: Any, selector: str) -> bool:
    """Whether an element of `selector` is shown; one the cockpit draws again meanwhile is not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return any(e.is_displayed() for e in driver.find_elements("css selector", selector))
    except StaleElementReferenceException:
        return False


def _status(driver: Any, selector: str) -> str | None:
    """The `data-status` of the element of `selector`; None while it is missing or being drawn again."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = driver.find_elements("css selector", selector)
        return found[0].get_attribute("data-status") if found else None
    except StaleElementReferenceException:
        return None


def _severe_but_refusals(driver: Any) -> list[str]:
    """SEVERE console messages, without the 400 and 401 the test asks for (the browser logs every refused request)."""
    return [m for m in severe(driver) if not (" 400 " in m or "(Bad Request)" in m or ("/v1.1" in m and "401" in m))]


def _text_nodes(driver: Any, text: str) -> list[dict[str, str]]:
    """Where the page holds `text` as one text node: its parent element's tag and class."""
    return driver.execute_script("""
        const found = [];
        const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
          if (node.data === arguments[0]) found.push({tag: node.parentElement.tagName,
            cls: node.parentElement.className});
        }
        return found;""", text)


def _images_of_x(driver: Any) -> int:
    return driver.execute_script(
        "return [...document.querySelectorAll('img')].filter((i) => i.getAttribute('src') === 'x').length")


def test_a_citizen_tells_the_city_and_an_officer_publishes_and_answers(city: Server) -> None:
    from selenium.webdriver.support.ui import Select

    text = f"The pavement is broken at the corner, {uuid.uuid4().hex[:8]}.\nPlease fix it."
    driver = chrome(1280, 900)
    try:
        _open(driver, city)
        assert driver.find_element("id", "feedback").is_displayed()
        assert driver.find_element("id", "feedback-heading").text == "Tell the city"
        # the categories, from the collection's queryables
        offered = [o.get_attribute("value") for o in driver.find_elements("css selector", "#feedback-category option")]
        assert offered == ["", *CATEGORIES]
        # the published messages are a layer of their own, drawn from live GeoJSON, not from the collection's tiles
        assert driver.find_element("id", "layer-feedback").is_selected()
        assert not driver.execute_script("return window.udpCockpit.map.getSource('layer:feedback')")
        assert not _shown(driver, "#moderation")

        # a citizen: the button, a click on the map, the form
        driver.find_element("id", "feedback-start").click()
        assert driver.find_element("id", "feedback-pick").is_displayed()
        _click_map(driver, 9.92, 53.55)
        wait_until(lambda: driver.find_element("id", "feedback-form").is_displayed(), 5, "the form")
        assert driver.execute_script("return window.udpCockpit.state.feedback.place") == pytest.approx([9.92, 53.55],
                                                                                                     abs=1e-3)
        box = driver.find_element("id", "feedback-text")
        box.send_keys(text)
        assert driver.find_element("id", "feedback-count").text == f"{len(text)} / 2,000 characters"
        # sent without a category: the server's reason, shown
        driver.find_element("id", "feedback-send").click()
        error = driver.find_element("id", "feedback-error")
        wait_until(lambda: "category" in error.text, 10, "the server's reason")
        assert "is not one of road damage" in error.text and "400" in error.text
        assert driver.find_element("id", "feedback-form").is_displayed()  # the text is kept to send again
        Select(driver.find_element("id", "feedback-category")).select_by_value("road damage")
        driver.find_element("id", "feedback-contact").send_keys("anna@example.org")
        driver.find_element("id", "feedback-send").click()
        thanks = driver.find_element("id", "feedback-thanks")
        wait_until(thanks.is_displayed, 10, "the thanks")
        assert "waiting for moderation" in thanks.text
        assert not driver.find_element("id", "feedback-form").is_displayed()

        # it is stored as written, where it was clicked, and hidden from the public until published
        mine = [f for f in _items(city, MODERATOR).values() if f["properties"]["text"] == text]
        assert len(mine) == 1
        fid, sent = str(mine[0]["id"]), mine[0]
        assert sent["properties"]["status"] == "received" and sent["properties"]["category"] == "road damage"
        assert sent["properties"]["contact"] == "anna@example.org" and sent["properties"]["area"] == "Altona"
        assert sent["geometry"]["coordinates"] == pytest.approx([9.92, 53.55], abs=1e-3)
        assert fid not in _items(city)
        assert not driver.find_elements("css selector", f"[data-feedback='{fid}']")

        # an officer signs in: the queue, with the new message and its contact
        _sign_in(driver, *MODERATOR)
        wait_until(lambda: driver.execute_script("return document.body.dataset.user") == MODERATOR[0], 10, "in")
        _ready(driver)
        queued = f"#moderation-list li[data-feedback='{fid}']"
        wait_until(lambda: _shown(driver, queued), 10, "the message in the queue")
        assert driver.find_element("css selector", queued).get_attribute("data-status") == "received"
        assert driver.find_element("css selector", f"{queued} .contact").text == "anna@example.org"
        driver.find_element("css selector", f"{queued} button[data-action='publish']").click()
        wait_until(lambda: _items(city).get(fid, {}).get("properties", {}).get("status") == "published", 10,
                   "published")
        wait_until(lambda: _status(driver, queued) == "published", 10, "the queue showing it published")
        # answered from the queue
        driver.find_element("id", f"answer-{fid}").send_keys("Repaired on Monday")
        driver.find_element("id", f"answer-department-{fid}").send_keys("Roads")
        driver.find_element("css selector", f"{queued} button[data-action='answer']").click()
        wait_until(lambda: _items(city).get(fid, {}).get("properties", {}).get("status") == "answered", 10,
                   "answered")
        public = _items(city)[fid]["properties"]
        assert (public["response"], public["department"]) == ("Repaired on Monday", "Roads")
        assert "contact" not in public
        wait_until(lambda: not driver.find_elements("css selector", queued), 10, "an answered message leaves the queue")

        # the public's view, signed out: the answer in the list and on the map
        driver.find_element("id", "sign-out").click()
        wait_until(lambda: driver.execute_script("return document.body.dataset.user") is None, 10, "signed out")
        _ready(driver)
        assert not _shown(driver, "#moderation")
        listed = f"#feedback-list li[data-feedback='{fid}']"
        wait_until(lambda: _shown(driver, listed), 10, "the message in the list")
        item = driver.find_element("css selector", listed)
        assert item.get_attribute("data-status") == "answered"
        assert item.find_element("css selector", ".feedback-text").text == text
        assert item.find_element("css selector", ".feedback-response").text == "Repaired on Monday"
        assert "Answer from Roads" in item.text and "Altona" in item.text and "anna@" not in item.text
        # newest first
        order = [li.get_attribute("data-feedback") for li in driver.find_elements("css selector", "#feedback-list li")]
        created = {k: f["properties"]["created"] for k, f in _items(city).items()}
        assert order == sorted(order, key=lambda k: created[k], reverse=True)
        _jump(driver, 9.92, 53.55, 15)
        drawn = wait_until(lambda: [f for f in _rendered(driver, "feedback") if str(f["id"]) == fid], 10,
                           "its point on the map")
        assert drawn[0]["properties"]["status"] == "answered"
        _click_map(driver, 9.92, 53.55)
        popup = ".feedback-popup"
        wait_until(lambda: _shown(driver, popup), 5, "its popup")
        shown = driver.find_element("css selector", popup).text
        assert "road damage" in shown and "Repaired on Monday" in shown and "Roads" in shown and "Altona" in shown
        assert "answered" in shown
        assert _severe_but_refusals(driver) == []
    finally:
        driver.quit()


def test_a_published_text_is_shown_as_text_and_runs_nothing(city: Server) -> None:
    driver = chrome(1280, 900)
    try:
        _open(driver, city)
        title = driver.title
        assert title and "pwned" not in title
        fid = _post(city, HOSTILE)
        _patch(city, fid, {"status": "published"})
        # announced over MQTT: in the list without a reload
        listed = f"#feedback-list li[data-feedback='{fid}']"
        wait_until(lambda: _shown(driver, listed), 10, "the message in the list, live")
        _patch(city, fid, {"status": "answered", "response": HOSTILE, "department": "<b>Roads</b>"})
        wait_until(lambda: _status(driver, listed) == "answered", 10, "the answer, live")
        # each one text node, in the text's and the response's paragraphs; no element made of it
        assert sorted(n["cls"] for n in _text_nodes(driver, HOSTILE)) == ["feedback-response", "feedback-text"]
        assert driver.find_element("css selector", f"{listed} .feedback-text").text == HOSTILE
        assert "Answer from <b>Roads</b>" in driver.find_element("css selector", listed).text
        assert not driver.find_elements("css selector", f"{listed} b")
        # and on the map
        driver.find_element("css selector", f"{listed} button").click()
        wait_until(lambda: _shown(driver, ".feedback-popup"), 5, "its popup")
        assert len(_text_nodes(driver, HOSTILE)) == 4
        assert driver.find_element("css selector", ".feedback-popup .feedback-text").text == HOSTILE
        assert _images_of_x(driver) == 0
        assert driver.title == title
        # nothing asked for the image either
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert not [u for u in fetched if u.endswith("/x")]
        assert _severe_but_refusals(driver) == []
    finally:
        driver.quit()


def test_the_queue_is_a_moderators_only(city: Server) -> None:
    waiting = _post(city, "A bench is missing")
    driver = chrome(1280, 900)
    try:
        _open(driver, city)
        _sign_in(driver, *READER)
        wait_until(lambda: driver.execute_script("return document.body.dataset.user") == READER[0], 10, "in")
        _ready(driver)
        assert not _shown(driver, "#moderation")
        assert not driver.find_elements("css selector", "#moderation-list li, button[data-action]")
        assert not driver.find_elements("css selector", f"[data-feedback='{waiting}']")
        assert driver.execute_script("return window.udpCockpit.state.feedback.moderator") is False
        # the server refuses the reader anyway
        r = httpx.patch(f"{city.url}/ogcapi/collections/feedback/items/{waiting}", json={"status": "published"},
                        auth=READER, timeout=30)
        assert r.status_code == 403
        # the same page, the moderator signed in instead: the queue, with the waiting message
        driver.find_element("id", "sign-out").click()
        wait_until(lambda: driver.execute_script("return document.body.dataset.user") is None, 10, "signed out")
        _sign_in(driver, *MODERATOR)
        wait_until(lambda: _shown(driver, f"#moderation-list li[data-feedback='{waiting}']"), 15, "the queue")
        # a message sent meanwhile joins the queue live (announced without its content: read again as the moderator)
        fresh = _post(city, "A tree has fallen on the path")
        wait_until(lambda: _shown(driver, f"#moderation-list li[data-feedback='{fresh}']"), 10, "the new one, live")
        assert not driver.find_elements("css selector", f"#feedback-list li[data-feedback='{fresh}']")
        assert _severe_but_refusals(driver) == []
    finally:
        driver.quit()


def test_a_phone_tells_the_city_from_the_map_centre(city: Server) -> None:
    """On a phone the panels stack below the map; the map's centre is a place too (the way without a pointer)."""
    from selenium.webdriver.support.ui import Select

    phone = chrome(390, 844, phone=True)
    try:
        _open(phone, city)
        start = phone.find_element("id", "feedback-start")
        phone.execute_script("arguments[0].scrollIntoView({block: 'center'})", start)
        start.click()
        phone.find_element("id", "feedback-centre").click()
        wait_until(lambda: phone.find_element("id", "feedback-form").is_displayed(), 5, "the form")
        Select(phone.find_element("id", "feedback-category")).select_by_value("litter")
        phone.find_element("id", "feedback-text").send_keys("Bins overflowing " + "x" * 300)
        # nothing wider than the screen, the form's controls included
        assert phone.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        for control in ("feedback-category", "feedback-text", "feedback-contact", "feedback-send"):
            rect = phone.find_element("id", control).rect
            assert rect["x"] >= 0 and rect["x"] + rect["width"] <= 390, control
        phone.find_element("id", "feedback-send").click()
        wait_until(lambda: phone.find_element("id", "feedback-thanks").is_displayed(), 10, "the thanks")
        centre = phone.execute_script("const c = window.udpCockpit.map.getCenter(); return [c.lng, c.lat]")
        sent = [f for f in _items(city, MODERATOR).values() if f["properties"]["text"].startswith("Bins overflowing")]
        assert len(sent) == 1 and sent[0]["geometry"]["coordinates"] == pytest.approx(centre, abs=1e-4)
        assert _severe_but_refusals(phone) == []
    finally:
        phone.quit()
