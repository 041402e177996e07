"""udp.http_protocol: each answer's head and body reach the socket in one write, and HTTP/1.1 stays whole (100
Continue, pipelining, streamed bodies, HEAD, 304, an app that fails), through uvicorn on a real socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from udp.http_protocol import OneWriteHttpTools

WRITES: list[bytes] = []  # every write to a socket by the server under test, in order


class _Counted:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        WRITES.append(b"".join(parts))
        self._transport.writelines(parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CountedProtocol(OneWriteHttpTools):
    """The protocol under test, its socket's writes recorded (the socket is real: only looked at)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Counted(transport))  # type: ignore[arg-type]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A small ASGI app: /json (a body), /stream (three parts), /empty (304), /fail (fails before answering),
    /half (fails after its head), /echo (the request body back)."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/fail":
        raise RuntimeError("fails before answering")
    if path == "/empty":
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"x"')]})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/half":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        raise RuntimeError("fails after its head")
    content = body if path == "/echo" else b'{"value": [' + b",".join(b"%d" % i for i in range(5000)) + b"]}"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]})
    await send({"type": "http.response.body", "body": content})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=CountedProtocol, log_level="critical",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _raw(url: str, data: bytes, until: bytes, timeout: float = 5.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while until not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_an_answer_is_one_write_with_its_head(url: str) -> None:
    WRITES.clear()
    r = httpx.get(f"{url}/json")
    assert r.status_code == 200 and len(r.json()["value"]) == 5000
    assert len(WRITES) == 1, [w[:40] for w in WRITES]
    assert WRITES[0].startswith(b"HTTP/1.1 200 OK\r\n") and WRITES[0].endswith(b"4999]}")


def test_an_answer_without_a_body_and_head_requests_are_one_write(url: str) -> None:
    WRITES.clear()
    r = httpx.get(f"{url}/empty")
    assert r.status_code == 304 and r.headers["etag"] == '"x"'
    assert len(WRITES) == 1 and WRITES[0].startswith(b"HTTP/1.1 304")
    WRITES.clear()
    r = httpx.head(f"{url}/json")
    assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 20_000
    assert len(WRITES) == 1


def test_a_streamed_answer_has_its_head_with_the_first_part(url: str) -> None:
    WRITES.clear()
    r = httpx.get(f"{url}/stream")
    assert r.status_code == 200 and r.text == "one two three"
    assert WRITES[0].startswith(b"HTTP/1.1 200") and WRITES[0].endswith(b"one \r\n")
    assert len(WRITES) == 4  # the head and the first part, two parts, the last (empty) chunk


def test_100_continue_is_written_before_the_body_is_sent(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = s.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        s.sendall(b"hello")
        got = b""
        while not got.endswith(b"hello"):
            chunk = s.recv(1024)
            assert chunk, got
            got += chunk
        assert got.startswith(b"HTTP/1.1 200")


def test_pipelined_requests_are_answered_in_order(url: str) -> None:
    two = (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
           b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond")
    got = _raw(url, two, b"second")
    assert got.count(b"HTTP/1.1 200") == 2
    assert got.index(b"first") < got.index(b"second")


def test_an_app_failing_before_or_after_its_head(url: str) -> None:
    r = httpx.get(f"{url}/fail")
    assert r.status_code == 500 and r.text == "Internal Server Error"
    with pytest.raises(httpx.RemoteProtocolError):  # the head was never sent whole: the connection is closed
        httpx.get(f"{url}/half")
    assert httpx.get(f"{url}/json").status_code == 200  # the server goes on
