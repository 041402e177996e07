"""The one harness for tests and benchmarks: reserved ports, `udp serve`/`udp demo` and other processes
started and waited for, a private Mosquitto, throw-away PostgreSQL databases, process trees, and the
platform in-process behind an ASGI client.

Benchmarks run as `python bench/x.py` put the repository root on sys.path and import `tests.harness`."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("UDP_TEST_PG")
T = TypeVar("T")


def say(*args: object) -> None:
    """Print at once (benchmarks run for minutes)."""
    print(*args, flush=True)


# -- ports -----------------------------------------------------------------------------------------------
_HANDED_OUT: set[int] = set()  # every port given in this process: none twice, however quickly it is freed


def _ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (Linux's ip_local_port_range; its default elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


# Ports are reserved below the ephemeral range: a reserved port is free between `release()` and the moment its
# process listens on it (seconds for `udp serve`, which imports its configured data first), and any outgoing
# connection made meanwhile (the server's own MQTT clients to its embedded broker) could be given it by the kernel:
# `udp serve` then failed with "address already in use" on its HTTP port.
_EPHEMERAL_START = _ephemeral_ports().start
_RESERVED = range(max(1024, _EPHEMERAL_START - 12_000), _EPHEMERAL_START)  # 20768-32767 on Linux


class Ports:
    """Distinct TCP ports on 127.0.0.1, kept bound (so no other socket gets them) until `release()`, which
    comes just before the process that listens on them starts."""

    def __init__(self, count: int) -> None:
        self._held: list[socket.socket] = []
        while len(self._held) < count:
            port = random.choice(_RESERVED)
            if port in _HANDED_OUT:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # something else has it
                s.close()
                continue
            _HANDED_OUT.add(port)
            self._held.append(s)
        self.numbers = [s.getsockname()[1] for s in self._held]

    def __getitem__(self, index: int) -> int:
        return self.numbers[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self.numbers)

    def __len__(self) -> int:
        return len(self.numbers)

    def release(self) -> list[int]:
        """Free the ports for the process about to listen on them."""
        for s in self._held:
            s.close()
        self._held.clear()
        return self.numbers


def free_port() -> int:
    """A port nothing listens on now and never handed out before in this process; freed at once, so a port
    that a process takes later belongs in `Ports`, reserved with the others it needs."""
    return Ports(1).release()[0]


# -- waiting -----------------------------------------------------------------------------------------------
def tail(path: Path | None, lines: int = 40) -> str:
    """The last lines of a log file ("" when there is none)."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_until(check: Callable[[], T], timeout: float = 10, what: str = "the condition", every: float = 0.1,
               ignore: tuple[type[BaseException], ...] = (), detail: Callable[[], str] | None = None) -> T:
    """Call `check` until it returns something true and return that; exceptions of the `ignore` types count as
    not yet. AssertionError naming `what` (the last ignored exception and `detail()`) when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            got = check()
            if got:
                return got
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            note = f" (last: {last!r})" if last is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{note}"
                                 + (f"\n{detail()}" if detail else ""))
        time.sleep(every)


def _still_running(proc: subprocess.Popen | None, what: str, log: Path | None) -> None:
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"{what} exited ({proc.returncode}):\n{tail(log)}")


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on the port."""
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen | None = None, what: str = "the process", log: Path | None = None,
              timeout: float = 15) -> None:
    """Until something listens on `port`; RuntimeError with the log's tail when `proc` exits first."""
    def ready() -> bool:
        _still_running(proc, what, log)
        return listening(port)

    wait_until(ready, timeout, f"{what} to listen on {port}", 0.05, detail=lambda: tail(log))


def wait_http(url: str, proc: subprocess.Popen | None = None, what: str = "the server", log: Path | None = None,
              timeout: float = 90) -> None:
    """Until GET `url` (asking for JSON) answers 200; RuntimeError with the log's tail when `proc` exits first."""
    with httpx.Client(timeout=5, headers={"Accept": "application/json"}) as client:
        def ready() -> bool:
            _still_running(proc, what, log)
            try:
                return client.get(url).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout, f"{what} to answer {url}", 0.05, detail=lambda: tail(log))


# -- processes -----------------------------------------------------------------------------------------------
def stop_process(proc: subprocess.Popen, group: bool = True, timeout: float = 15) -> int | None:
    """SIGTERM (to its whole process group when `group`: workers, bridge), SIGKILL when it lingers; the exit code."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


def process_tree(root: int) -> list[int]:
    """A process and all its descendants (a serve process's workers and bridge)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class Process:
    """A command in its own process group (stopped with everything it started), its output in a log file;
    `ports` reserved for it are released just before it starts."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None, name: str | None = None,
                 ports: Ports | None = None, cwd: Path = ROOT) -> None:
        self.cmd, self.log_path, self.name = cmd, log, name or Path(cmd[0]).name
        with open(log, "w") as out:
            if ports is not None:
                ports.release()
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                         env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def pid(self) -> int:
        """The process id (its process group's too)."""
        return self.proc.pid

    def wait_http(self, url: str, timeout: float = 90) -> None:
        """Until GET `url` answers 200 (RuntimeError with the log when the process exits)."""
        wait_http(url, self.proc, self.name, self.log_path, timeout)

    def wait_port(self, port: int, timeout: float = 15) -> None:
        """Until the process listens on `port`."""
        wait_port(port, self.proc, self.name, self.log_path, timeout)

    def tail(self, lines: int = 40) -> str:
        """The end of its log."""
        return tail(self.log_path, lines)

    def tree(self) -> list[int]:
        """Its pid and its descendants'."""
        return process_tree(self.proc.pid)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM to the process group, SIGKILL after `timeout` s; the exit code."""
        return stop_process(self.proc, True, timeout)


class Udp(Process):
    """`udp serve …` or `udp demo …` on reserved ports: HTTP, and the embedded broker's MQTT and WebSocket
    ports unless `--mqtt` names a broker."""

    def __init__(self, *args: str, log: Path | None = None, env: dict[str, str] | None = None) -> None:
        command, rest = args[0], list(args[1:])
        embedded = "--mqtt" not in rest
        ports = Ports(3 if embedded else 1)
        self.port = ports[0]
        self.mqtt_port, self.ws_port = (ports[1], ports[2]) if embedded else (None, None)
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "udp.cli", command, "--port", str(self.port), *rest]
        if embedded:
            cmd += ["--mqtt-port", str(self.mqtt_port), "--mqtt-ws-port", str(self.ws_port)]
        log = log or Path(tempfile.gettempdir()) / f"udp-{command}-{self.port}.log"
        super().__init__(cmd, log, env, f"udp {command}", ports)

    def wait(self, timeout: float = 90) -> Udp:
        """Until /health answers 200."""
        self.wait_http(f"{self.url}/health", timeout)
        return self


# -- Mosquitto -------------------------------------------------------------------------------------------------
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


class Mosquitto:
    """A private Mosquitto in its own directory or `workdir` (mode 0o777: run as root, mosquitto drops to its own
    user and must write its database there) on reserved ports. `conf` is more settings after `listener` and
    `allow_anonymous`, or a function of (ports, directory) that writes the whole file."""

    def __init__(self, conf: str | Callable[[list[int], Path], str] = "", *, listeners: int = 1,
                 persistence: bool = False, workdir: Path | None = None) -> None:
        if MOSQUITTO is None:
            raise RuntimeError("mosquitto is not installed (Debian package mosquitto)")
        self._own_dir = workdir is None  # a directory given stays for its owner to remove
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="udp-mosquitto-"))
        self.dir.chmod(0o777)
        reserved = Ports(listeners)
        self.ports = list(reserved)
        self.port = self.ports[0]
        if callable(conf):
            text = conf(self.ports, self.dir)
        else:
            text = (f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    + (f"persistence true\npersistence_location {self.dir}/\nautosave_interval 1\n"
                       if persistence else "persistence false\n")
                    + conf + "\nlog_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(text, encoding="utf-8")
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        reserved.release()
        self.start()

    def start(self) -> None:
        """Start it (again, on the same ports and files) and wait until every listener accepts connections."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log,  # type: ignore[list-item]
                                         stderr=subprocess.STDOUT, start_new_session=True)
        for port in self.ports:
            wait_port(port, self.proc, "mosquitto", self.log_path)

    def kill(self) -> None:
        """SIGKILL: what it had not saved yet is gone, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """A clean stop (it saves its database when persistence is on)."""
        if self.proc is not None:
            stop_process(self.proc, False, 10)

    def close(self) -> None:
        """Stop it and remove its directory (unless it was given one)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- PostgreSQL -------------------------------------------------------------------------------------------------
@dataclass
class Database:
    """A store URL and how to get rid of it."""

    url: str
    drop: Callable[[], None]


def create_pg(admin: str, prefix: str = "udp_test") -> Database:
    """A fresh PostgreSQL database next to `admin`'s, dropped by `drop()`."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return Database(f"{admin.rpartition('/')[0]}/{name}", drop)


def pg_database(admin: str | None = None) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (next to UDP_TEST_PG's) while the generator lives, dropped afterwards."""
    db = create_pg(admin or PG_URL or "")
    try:
        yield db.url
    finally:
        db.drop()


def _pg_bin() -> Path | None:
    """The directory of the newest installed PostgreSQL's initdb and pg_ctl (Debian layout), or of PATH's."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _postgis_installed(bin_dir: Path) -> bool:
    """True when PostGIS's extension files are installed for that PostgreSQL."""
    try:
        share = subprocess.run([str(bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except OSError:
        share = f"/usr/share/postgresql/{bin_dir.parent.name}"
    return any(Path(share, "extension").glob("postgis.control"))


PG_BIN = _pg_bin()
_ROOT = os.geteuid() == 0


def private_postgres_missing() -> str | None:
    """Why a private PostgreSQL cluster (`PrivatePostgres`) cannot run here; None when it can."""
    if PG_BIN is None or not (PG_BIN / "pg_ctl").exists():
        return "PostgreSQL's initdb/pg_ctl are not installed (Debian package postgresql)"
    if not _postgis_installed(PG_BIN):
        return "PostGIS is not installed for that PostgreSQL (Debian package postgresql-15-postgis-3)"
    if _ROOT:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "run as root without a `postgres` user: initdb cannot run as root"
        if shutil.which("runuser") is None:
            return "run as root without `runuser` to run initdb/pg_ctl as user postgres"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port (socket and data in a temp dir), stoppable at will."""

    def __init__(self, primary: PrivatePostgres | None = None) -> None:
        """A new cluster; with `primary`, a streaming replica of it (pg_basebackup, standby.signal)."""
        assert PG_BIN is not None
        self.dir = Path(tempfile.mkdtemp(prefix="udp-faults-pg-"))
        if _ROOT:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        if primary is None:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        else:
            self._run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-D",
                      str(self.data), "-R", "-X", "stream", "--checkpoint=fast")
        self.start()

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(PG_BIN / tool), *args]  # type: ignore[operator]
        if _ROOT:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stdout}{out.stderr}\n{tail(self.log)}")

    def url(self, db: str = "postgres") -> str:
        """A connection URL for database `db`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after crash recovery, if any)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200", "start")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: `immediate` is a crash as far as clients can tell (no clean disconnects)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        """True when the server accepts TCP connections."""
        return listening(self.port)

    def close(self) -> None:
        """Stop the server and remove its files."""
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the platform for tests: as a process, or in this one ----------------------------------------------------
@dataclass
class Server:
    """A running platform: its base URL and an HTTP client for it."""

    url: str
    store: str
    kind: str
    client: httpx.Client
    process: subprocess.Popen | None  # None: in-process
    mqtt_port: int | None = None  # the embedded broker, when the server runs one
    ws_port: int | None = None
    log_path: Path | None = None
    app: AppTransport | None = None  # in-process: the app every client of it goes through

    @property
    def sta(self) -> str:
        """The SensorThings service root."""
        return f"{self.url}/v1.1"

    def http(self, path: str = "", timeout: float = 60) -> httpx.Client:
        """Another client, its base URL `url` + `path`, that reaches this platform (in-process ones too)."""
        return httpx.Client(base_url=self.url + path, timeout=timeout, transport=self.app)


def start_server(store: str, kind: str, extra: list[str] | None = None, env: dict[str, str] | None = None) -> Server:
    """Start `udp serve` on reserved ports and wait until it answers."""
    udp = Udp("serve", "--store", store, *(extra or []), env=env)
    try:
        udp.wait(60)
    except (RuntimeError, AssertionError):
        udp.stop()
        raise
    return Server(udp.url, store, kind, httpx.Client(base_url=udp.url, timeout=60), udp.proc, udp.mqtt_port,
                  udp.ws_port, udp.log_path)


class AppTransport(httpx.BaseTransport):
    """An ASGI app served to sync httpx clients: httpx's ASGI transport on an event loop in a thread, with the
    app's lifespan run at start and at `shutdown()`. Clients that share it may close; only `shutdown()` ends it."""

    def __init__(self, app: Any) -> None:
        from anyio.from_thread import start_blocking_portal

        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500, as a server answers
        self._portal_cm = start_blocking_portal()
        portal = self._portal = self._portal_cm.__enter__()
        self._lifespan = portal.wrap_async_context_manager(app.router.lifespan_context(app))
        self._lifespan.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """The app's answer to one request."""
        content = request.read()  # a sync stream (a generator's chunks too) cannot be read on the loop

        async def call() -> tuple[int, list[tuple[str, str]], bytes]:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=content)
            response = await self._asgi.handle_async_request(inner)
            return response.status_code, response.headers.multi_items(), await response.aread()

        status, headers, body = self._portal.call(call)
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request)

    def close(self) -> None:
        """Nothing: other clients may still use the app."""

    def shutdown(self) -> None:
        """The app's lifespan ends (store closed), then the event loop."""
        self._lifespan.__exit__(None, None, None)
        self._portal_cm.__exit__(None, None, None)


_IN_PROCESS: list[Server] = []


def start_in_process(store: str, kind: str, config: Path | None = None) -> Server:
    """The platform's ASGI app (udp/app.py's build_app) in this process behind an ASGI client, for HTTP-only
    tests: no broker, bridge, indicators engine or `sensors:` provisioning. One at a time: the OGC API's source
    registry is process-wide."""
    from udp.app import build_app
    from udp.config import load_config

    if _IN_PROCESS:
        raise RuntimeError("an in-process platform is open already: stop it first (one source registry per process)")
    cfg = load_config(str(config) if config else None)
    cfg.store = store
    # pygeoapi reads its configuration when its app module is first imported: a fresh one for this configuration
    sys.modules.pop("pygeoapi.starlette_app", None)
    url = "http://testserver"
    app = AppTransport(build_app(cfg))
    server = Server(url, store, kind, httpx.Client(base_url=url, transport=app, timeout=60), None, app=app)
    _IN_PROCESS.append(server)
    return server


def stop_server(server: Server) -> None:
    """Stop a server started by start_server or start_in_process."""
    if server.app is not None:
        _IN_PROCESS.remove(server)
        server.app.shutdown()
        return
    server.client.close()
    stop_process(server.process, True, 10)
