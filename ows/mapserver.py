"""MapServer's `mapserv` run as a CGI program, one process per request: a crash or a runaway request costs
that process, never a worker of the platform, and there is no binding to build (PyPI's `mapscript` has no
Linux wheel; Debian's is built for Debian's own Python).

The platform decides which mapfile a request gets (by who asks); MapServer's own ways for a client to choose a
mapfile or change it from the URL are closed: the `map` parameter and every `map.…`-style modification are
dropped, and MapServer's config file allows only the platform's own directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

TIMEOUT_S = 60.0  # one request's MapServer run; past it the process is killed and the client told
_running: asyncio.Semaphore | None = None  # MapServer processes of this worker at a time


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
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_text(text)
        os.replace(partial, path)
    return path


def safe_query(query: str, service: str) -> str:
    """The client's parameters without those that choose or modify the mapfile or make MapServer fetch a URL
    (`SLD=` by reference), and with SERVICE fixed to the endpoint's."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
            if not (k.lower().startswith("map") or k.lower() in {"service", "mode", "sld", "qlayer", "qstring"}
                    or "." in k or "[" in k)]
    return urlencode([("SERVICE", service), *kept])


async def run(mapfile: Path, config: Path, query: str, body: bytes | None = None,
              content_type: str | None = None, limit: int = 4) -> Answer:
    """MapServer's answer to one request on a mapfile (a POST when `body` is given)."""
    global _running
    program = mapserv()
    if program is None:
        raise FileNotFoundError("mapserv")
    if _running is None:
        _running = asyncio.Semaphore(limit)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MAPSERVER_CONFIG_FILE": str(config),
        "MS_MAPFILE": str(mapfile),
        "MS_ERRORFILE": "stderr",
        "REQUEST_METHOD": "POST" if body is not None else "GET",
        "QUERY_STRING": query,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    for name in ("PROJ_DATA", "PROJ_LIB", "GDAL_DATA", "LANG"):
        if name in os.environ:
            env[name] = os.environ[name]
    if body is not None:
        env["CONTENT_LENGTH"] = str(len(body))
        env["CONTENT_TYPE"] = content_type or "application/xml"
    async with _running:
        proc = await asyncio.create_subprocess_exec(
            program, stdin=asyncio.subprocess.PIPE if body is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, _err = await asyncio.wait_for(_talk(proc, body), TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    return parse_cgi(out)


async def _talk(proc: asyncio.subprocess.Process, body: bytes | None) -> tuple[bytes, bytes]:
    """The body to MapServer's stdin, its stdout and stderr back; MapServer may answer (an error) without
    reading the body, which is no failure of ours."""
    if body is not None and proc.stdin is not None:
        try:
            proc.stdin.write(body)
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())  # type: ignore[union-attr]
    await proc.wait()
    return out, err


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
