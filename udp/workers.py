"""HTTP worker processes that share the load evenly: each listens on a socket of its own (SO_REUSEPORT).

uvicorn's workers accept from one shared socket, and asyncio accepts every pending connection it can at
each wake-up: a burst of new connections (a reverse proxy's keep-alive pool, a load test) mostly lands on
one worker while the others idle (measured: 15 of 16 connections on one of two workers). With a listening
socket per worker the kernel spreads new connections across them by their address hash, as gunicorn's
`reuse_port` and nginx's `reuseport` do.
"""

from __future__ import annotations

import logging
import socket

from uvicorn import Config
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("udp.workers")


def spreads() -> bool:
    """Whether this system can give each worker a listening socket of its own."""
    return hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_free(host: str, port: int) -> None:
    """Raise OSError when `host:port` is taken: sockets that all set SO_REUSEPORT would share the port with
    another running platform instead of failing."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        probe.bind((host, port))


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` in the port's SO_REUSEPORT group, for one worker to listen on."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class SpreadWorkers(Multiprocess):
    """uvicorn's worker supervisor (start, health checks, restarts), each worker started with a new socket.

    This process lets go of a socket once the worker it went to has started (the worker holds its own copy):
    a worker that dies takes its socket out of the group, so no connection waits on a socket nobody serves."""

    def __init__(self, config: Config) -> None:
        self._handed: list[socket.socket] = []
        super().__init__(config, [])

    @property  # type: ignore[override]
    def sockets(self) -> list[socket.socket]:
        """A socket for the worker about to start (uvicorn reads this once per worker it starts)."""
        sock = listening_socket(self.config.host, self.config.port)
        self._handed.append(sock)
        return [sock]

    @sockets.setter
    def sockets(self, _value: list[socket.socket]) -> None:
        pass  # uvicorn's own assignment: each worker gets a new socket instead

    def keep_subprocess_alive(self) -> None:
        """uvicorn's check of the workers; then the sockets of those started meanwhile are the workers' alone."""
        super().keep_subprocess_alive()
        handed, self._handed = self._handed, []
        for sock in handed:
            sock.close()


def run(config: Config) -> None:
    """Serve `config.app` with `config.workers` worker processes, connections spread across them."""
    try:
        check_free(config.host, config.port)
    except OSError as exc:  # as uvicorn says it for its own socket
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        raise SystemExit(1) from None
    log.info("%d workers on %s:%d, each with a socket of its own", config.workers, config.host, config.port)
    SpreadWorkers(config).run()
