"""MapServer's `mapserv` program run by each worker as a few FastCGI processes: a crash or a runaway request
costs a process, never a worker of the platform, and there is no binding to build (PyPI's `mapscript` has no
Linux wheel; Debian's is built for Debian's own Python). As a CGI program, one process per request, it spent
80 ms of each request loading its libraries (measured here: docs/maps.md); as FastCGI 2–6 ms.

The platform decides which mapfile a request gets (by who asks); MapServer's own ways for a client to choose a
mapfile or change it from the URL are closed: the `map` parameter and every `map.…`-style modification are
dropped, and MapServer's config file allows only the platform's own directory.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from features.shared_files import write_whole
from ows import fastcgi
from ows.fastcgi import FastCgiError

TIMEOUT_S = 60.0  # one request's MapServer run; past it the processes are restarted and the client told


def mapserv() -> str | None:
    """The path of MapServer's CGI program, None when it is not installed (Debian: cgi-mapserver)."""
    return shutil.which("mapserv") or next(
        (p for p in ("/usr/lib/cgi-bin/mapserv", "/usr/bin/mapserv") if os.access(p, os.X_OK)), None)


@dataclass
class Answer:
    """What MapServer printed: status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def config_file(directory: Path) -> Path:
    """MapServer's config file (8.0 needs one): mapfiles only from the platform's directory."""
    path = directory / "mapserver.conf"
    pattern = "^" + "".join(c if c.isalnum() or c in "/_-" else "\\" + c for c in str(directory.resolve())) + "/"
    text = f'CONFIG\n  ENV\n    MS_MAP_PATTERN "{pattern}"\n  END\nEND\n'
    if not path.exists() or path.read_text() != text:
        write_whole(path, text)
    return path


def safe_query(query: str, service: str) -> str:
    """The client's parameters without those that choose or modify the mapfile or make MapServer fetch a URL
    (`SLD=` by reference), and with SERVICE fixed to the endpoint's."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
            if not (k.lower().startswith("map") or k.lower() in {"service", "mode", "sld", "qlayer", "qstring"}
                    or "." in k or "[" in k)]
    return urlencode([("SERVICE", service), *kept])


class MapServer:
    """This worker's MapServer programs: `processes` of them in FastCGI mode, listening on one Unix socket and
    started at the first request. A program that died is started again before the next request; a request
    that outlives TIMEOUT_S restarts them all (MapServer has no timeout of its own)."""

    def __init__(self, directory: Path, processes: int = 2) -> None:
        self.directory = directory
        self.processes = processes
        self.config = config_file(directory)
        self.socket_path = str(directory / f"mapserv-{os.getpid()}.sock")
        self._listener: socket.socket | None = None
        self._running: list[asyncio.subprocess.Process] = []
        self._slots = asyncio.Semaphore(processes)
        self._starting = asyncio.Lock()
        atexit.register(self.close)

    async def run(self, mapfile: Path, query: str, body: bytes | None = None,
                  content_type: str | None = None) -> Answer:
        """MapServer's answer to one request on a mapfile (a POST when `body` is given)."""
        params = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": "POST" if body is not None else "GET",
            "QUERY_STRING": query,
            "MAPSERVER_CONFIG_FILE": str(self.config),
            "MS_MAPFILE": str(mapfile),
        }
        if body is not None:
            params |= {"CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": content_type or "application/xml"}
        async with self._slots:
            for attempt in (1, 2):  # once more on a program that died under the request
                await self._ensure()
                try:
                    out, _err = await asyncio.wait_for(fastcgi.request(self.socket_path, params, body or b""),
                                                       TIMEOUT_S)
                    return parse_cgi(out)
                except TimeoutError:
                    self.close()
                    raise
                except (FastCgiError, ConnectionError, FileNotFoundError):
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    async def _ensure(self) -> None:
        """The programs running, those that died started again."""
        async with self._starting:
            if self._listener is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(self.socket_path)
                listener.listen(64)
                self._listener = listener
            self._running = [p for p in self._running if p.returncode is None]
            program = mapserv()
            if program is None:
                raise FileNotFoundError("mapserv")
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MAPSERVER_CONFIG_FILE": str(self.config)}
            env |= {k: os.environ[k] for k in ("PROJ_DATA", "PROJ_LIB", "GDAL_DATA", "LANG") if k in os.environ}
            while len(self._running) < self.processes:
                # FastCGI's convention: the listening socket is the program's stdin
                self._running.append(await asyncio.create_subprocess_exec(
                    program, stdin=self._listener.fileno(), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent))

    def close(self) -> None:
        """Stop the programs and remove the socket (they are started again when needed)."""
        for proc in self._running:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        self._running = []
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGKILL when the worker that started it dies, however it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def parse_cgi(out: bytes) -> Answer:
    """A CGI program's output: header lines, a blank line, the body (a `Status:` header sets the status)."""
    found = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := out.find(sep)) >= 0]
    if not found:
        return Answer(502, {"Content-Type": "text/plain"}, b"MapServer gave no answer")
    cut, width = min(found)
    head = out[:cut].decode("latin-1")
    body = out[cut + width:]
    headers: dict[str, str] = {}
    status = 200
    for line in head.splitlines():
        name, _, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name and name.lower() not in {"content-length", "connection"}:
            headers[name] = value
    return Answer(status, headers, body)
