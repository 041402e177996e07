"""The client side of FastCGI 1.0 (the responder role) over a Unix socket, as far as the platform speaks it to
MapServer: one request per connection, its parameters, its body, and the program's stdout back.

Written here because no maintained Python package offers it (flup's `fcgi_app` is a 2011 WSGI client); the
protocol is eight-byte record headers around name-value pairs and streams (fastcgi-archives, FastCGI
Specification 1.0, sections 3 and 5).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping

_HEADER = struct.Struct("!BBHHBx")  # version, type, request id, content length, padding length, reserved
_BEGIN_REQUEST, _END_REQUEST, _PARAMS, _STDIN, _STDOUT, _STDERR = 1, 3, 4, 5, 6, 7
_RESPONDER = 1
_REQUEST_ID = 1
_CHUNK = 65535  # the most content one record holds


class FastCgiError(Exception):
    """The program closed the connection before it ended the request (it crashed, or was stopped)."""


def _records(kind: int, data: bytes) -> bytes:
    """A stream as records, ended by an empty one."""
    out = [_HEADER.pack(1, kind, _REQUEST_ID, len(part), 0) + part
           for part in (data[i:i + _CHUNK] for i in range(0, len(data), _CHUNK))]
    return b"".join(out) + _HEADER.pack(1, kind, _REQUEST_ID, 0, 0)


def _length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack("!I", n | 0x80000000)


def _pairs(params: Mapping[str, str]) -> bytes:
    out = []
    for name, value in params.items():
        k, v = name.encode(), value.encode()
        out.append(_length(len(k)) + _length(len(v)) + k + v)
    return b"".join(out)


async def request(socket_path: str, params: Mapping[str, str], body: bytes = b"") -> tuple[bytes, bytes]:
    """One request to the FastCGI program listening on `socket_path`: its stdout and stderr."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        begin = struct.pack("!HB5x", _RESPONDER, 0)  # flags 0: the program closes the connection when done
        writer.write(_HEADER.pack(1, _BEGIN_REQUEST, _REQUEST_ID, len(begin), 0) + begin
                     + _records(_PARAMS, _pairs(params)) + _records(_STDIN, body))
        await writer.drain()
        out: list[bytes] = []
        err: list[bytes] = []
        while True:
            try:
                head = await reader.readexactly(_HEADER.size)
                _version, kind, _rid, length, padding = _HEADER.unpack(head)
                content = await reader.readexactly(length + padding)
            except asyncio.IncompleteReadError:
                raise FastCgiError("the FastCGI program closed the connection mid-request") from None
            if kind == _STDOUT:
                out.append(content[:length])
            elif kind == _STDERR:
                err.append(content[:length])
            elif kind == _END_REQUEST:
                return b"".join(out), b"".join(err)
    finally:
        writer.close()
