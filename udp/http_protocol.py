"""uvicorn's httptools protocol with each response's head and first body part written to the socket together.

uvicorn writes the status line and headers when the app starts its response and the body when it sends it: two
`send()`s on the socket for every answer, and each wakes the client's side of the connection (on loopback, in the
sending process, holding the interpreter lock). Here the head waits for the body's first part and both go in one
write. Nothing else changes: the same parser, flow control, keep-alive and errors; a `100 Continue` is written
as before (the cycle writes it from `receive`, not from `send`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _HeadHeld:
    """A transport whose writes are kept (the response's head), everything else the real one's."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.held.append(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _HeadFirst:
    """A transport whose first write is preceded by the held head, in the same write."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        if head is None:
            self._transport.write(data)
        else:  # one send of both (uvloop's writelines is one writev), without copying a large body behind the head
            self._transport.writelines([head, data])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteCycle(RequestResponseCycle):
    """A request-response cycle writing its head with the body's first part."""

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        """uvicorn's send, the head held until the first body message."""
        if self.flow.write_paused and not self.disconnected:
            # uvicorn's send waits here first: waited for now, so that it never waits with the transport swapped
            await self.flow.drain()
        real = self.transport
        if message["type"] == "http.response.start" and not self.response_started:
            held = _HeadHeld(real)
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = real
            self._head = b"".join(held.held) or None
            return
        head, self._head = self._head, None
        if head is None:
            await super().send(message)
            return
        first = _HeadFirst(real, head)
        self.transport = first  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = real
            if first.head is not None and not real.is_closing():  # the message wrote nothing: the head still goes
                real.write(first.head)


class OneWriteHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with `OneWriteCycle`s (`uvicorn.Config(http=...)` takes it by dotted path)."""

    def on_headers_complete(self) -> None:
        """uvicorn's; the cycle it made (and may have started: its task has not run yet) becomes a `OneWriteCycle`."""
        super().on_headers_complete()
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = OneWriteCycle
