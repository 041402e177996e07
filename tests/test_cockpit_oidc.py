"""An officer signs in to the cockpit with the city's OpenID Connect issuer (authorization code flow with PKCE, as
Keycloak offers it to a public client) and moderates: the cockpit sends the browser to the issuer, exchanges the
code with its verifier for an access token, and uses it as a Bearer token.

The issuer here is a real HTTP server on a free port (discovery, keys, an authorization endpoint that signs the
officer in at once, a token endpoint that checks the PKCE verifier). Needs Chromium like tests/test_cockpit.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.browser import chrome, need_browser
from tests.conftest import Server, start_server, stop_server, wait_until
from tests.test_auth import Issuer
from tests.test_cockpit_feedback import _post, _shown
from tests.test_cockpit_signin import _ready
from tests.test_feedback import write_districts

CLIENT = "udp-cockpit"


class CityIssuer(Issuer):
    """An OpenID Connect issuer for a public client: it signs in `officer` (roles: moderate) at once."""

    def __init__(self) -> None:
        self.codes: dict[str, tuple[str, str]] = {}  # code → (challenge, redirect_uri)
        self.exchanged: list[dict[str, str]] = []
        super().__init__()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """Discovery, keys, and the authorization code flow with PKCE (S256) for `CLIENT`, with CORS."""
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                             "Access-Control-Allow-Origin": "*", **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                path, _, query = self.path.partition("?")
                if path == "/realms/city/.well-known/openid-configuration":
                    self._send(200, {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/certs",
                                     "authorization_endpoint": f"{issuer.url}/auth",
                                     "token_endpoint": f"{issuer.url}/token"})
                elif path == "/realms/city/certs":
                    self._send(200, {"keys": [issuer.jwk]})
                elif path == "/realms/city/auth":
                    q = {k: v[0] for k, v in parse_qs(query).items()}
                    if q.get("client_id") != CLIENT or q.get("code_challenge_method") != "S256":
                        self._send(400, {"error": "invalid_request"})
                        return
                    code = secrets.token_urlsafe(16)
                    issuer.codes[code] = (q["code_challenge"], q["redirect_uri"])
                    back = f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}"
                    self._send(302, None, {"Location": back})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                        .items()}
                issuer.exchanged.append(form)
                challenge, redirect = issuer.codes.pop(form.get("code", ""), ("", ""))
                verified = base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode())
                                                    .digest()).rstrip(b"=").decode()
                if not challenge or verified != challenge or form.get("redirect_uri") != redirect \
                        or form.get("client_id") != CLIENT:
                    self._send(400, {"error": "invalid_grant"})
                    return
                self._send(200, {"access_token": issuer.token(["moderate"], user=("o1", "officer")),
                                 "token_type": "Bearer", "expires_in": 300})

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, CityIssuer]]:
    need_browser()
    issuer = CityIssuer()
    tmp = tmp_path_factory.mktemp("cockpit-oidc")
    write_districts(tmp)
    (tmp / "config.yml").write_text(f"""title: City sign-in
auth:
  oidc:
    issuer: {issuer.url}
    audience: udp
    client_id: {CLIENT}
collections:
  districts: {{source: districts.geojson, id: code, style: {{label: name}}}}
feedback:
  categories: [idea]
  areas: districts
""", encoding="utf-8")
    server = start_server(f"sqlite:///{tmp / 'udp.db'}", "sqlite", ["--config", str(tmp / "config.yml")])
    try:
        yield server, issuer
    finally:
        stop_server(server)
        issuer.server.shutdown()


def test_an_officer_signs_in_at_the_city_issuer_and_moderates(city: tuple[Server, CityIssuer]) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    server, issuer = city
    stale = (StaleElementReferenceException,)  # the cockpit draws its panels again as news arrives
    me = httpx.get(f"{server.url}/me", timeout=30).json()
    assert me["oidc"] == {"issuer": issuer.url, "client_id": CLIENT}
    page = httpx.get(f"{server.url}/cockpit/", timeout=30)
    assert f"connect-src 'self' ws: wss: http://127.0.0.1:{issuer.port};" in page.headers["content-security-policy"]
    waiting = _post(server, "Plant trees on the square", lon=9.92, lat=53.55)
    driver = chrome(1280, 900)
    try:
        driver.get(f"{server.url}/cockpit/")
        _ready(driver)
        assert not _shown(driver, "#moderation")
        driver.find_element("css selector", "#sign-in-toggle").click()
        city_button = driver.find_element("css selector", "#sign-in-city")
        assert city_button.is_displayed()
        city_button.click()
        # to the issuer and back with a code, exchanged with the verifier; the code leaves the address bar
        wait_until(lambda: "Signed in as officer" in driver.find_element("css selector", "#account-status").text,
                   30, "the cockpit to sign in at the city's issuer", ignore=stale)
        assert "code=" not in driver.current_url and urlsplit(driver.current_url).path == "/cockpit/"
        assert len(issuer.exchanged) == 1 and len(issuer.exchanged[0]["code_verifier"]) >= 43
        wait_until(lambda: _shown(driver, f"#moderation-list li[data-feedback='{waiting}']"), 30,
                   "the moderation queue with the waiting item", ignore=stale)
        queued = driver.find_element("css selector", f"#moderation-list li[data-feedback='{waiting}']")
        queued.find_element("css selector", "button[data-action='publish']").click()
        wait_until(lambda: httpx.get(f"{server.url}/ogcapi/collections/feedback/items/{waiting}",
                                     timeout=30).status_code == 200, 15, "the item published by the officer")
        # a reload keeps the sign-in for the tab (the token in sessionStorage)
        driver.refresh()
        _ready(driver)
        wait_until(lambda: "Signed in as officer" in driver.find_element("css selector", "#account-status").text,
                   15, "the sign-in kept", ignore=stale)
    finally:
        driver.quit()
