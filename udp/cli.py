"""The `udp` command."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Callable

from udp.config import Config, ConfigError, load_config


def _free(host: str, port: int) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _any_ports(host: str, n: int, avoid: int | None = None) -> list[int]:
    """n distinct free ports on host, none of them avoid (the HTTP port, which is bound only later)."""
    held: list[socket.socket] = []
    picked: list[int] = []
    try:
        while len(picked) < n:  # every socket stays bound while picking, so the kernel cannot hand a port out twice
            s = socket.socket()
            held.append(s)
            s.bind((host, 0))
            if s.getsockname()[1] != avoid:
                picked.append(s.getsockname()[1])
        return picked
    finally:
        for s in held:
            s.close()


def _config(path: str | None) -> Config:
    """The configuration, or exit with the key's path and the reason."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _prepare_sources(config: Config, store_url: str) -> None:
    """Import the file sources that are new or changed, then open every declared collection once, or exit
    naming the collection and the reason."""
    from provider_plugins import postgis
    from provider_plugins.table import SourceError
    from sensorthings.store.base import Store
    from sensorthings.store.leadership import exclusive
    from udp.load import bring_in
    from udp.sources import open_source

    store = None
    try:
        store = Store.open(store_url)
        with exclusive(store_url, "imports"):  # nodes starting together: one imports, the others find it done
            for cid in bring_in(store, config.collections):
                print(f"  imported      {cid}", file=sys.stderr)
        for spec in config.collections.values():
            open_source(spec, store)  # a PostGIS table is only reflected, an import only looked up
    except SourceError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        postgis.dispose_engines()  # each worker opens its own pool
        if store is not None:
            store.close()


def _load(args: argparse.Namespace) -> int:
    """`udp load`: import the config's file sources into the store now (all of them with --all)."""
    import time

    from provider_plugins.imports import stale
    from provider_plugins.table import SourceError
    from sensorthings.store.base import Store
    from udp.load import import_files

    config = _config(args.config)
    store_url = args.store or config.store
    files = {cid: spec for cid, spec in config.collections.items() if not spec.is_postgis}
    if args.collection:
        unknown = [c for c in args.collection if c not in files]
        if unknown:
            print(f"load: no file collection {', '.join(unknown)} in {args.config}", file=sys.stderr)
            return 2
        files = {cid: files[cid] for cid in args.collection}
    store = Store.open(store_url)
    todo = list(files.values()) if args.all else stale(store, files.values())
    store.close()
    started = time.perf_counter()
    try:
        done = import_files(store_url, todo)
    except SourceError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 1
    print(f"imported {len(done)} of {len(files)} file sources into {store_url} in {time.perf_counter() - started:.1f} s"
          + (f": {', '.join(done)}" if done else " (the others are current)"))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = _config(args.config)
    if config.auth is None:
        print("WARNING: no `auth:` in the configuration: the platform runs open, anyone may create, change and "
              "delete data (see README, Access control)", file=sys.stderr)
    import secrets

    # the platform's own MQTT clients sign in to the embedded broker with this (its internal topics are theirs)
    os.environ["UDP_INTERNAL_SECRET"] = secrets.token_urlsafe(24)
    store_url = os.environ["UDP_STORE"] = args.store or config.store
    _prepare_sources(config, store_url)
    if args.config:
        os.environ["UDP_CONFIG"] = os.path.abspath(args.config)
    if args.public_url:
        os.environ["UDP_PUBLIC_URL"] = args.public_url
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://{shown}:{args.port}"
    public = (args.public_url or config.public_url or base).rstrip("/")
    os.environ["UDP_BASE_URL"] = public
    from apicommon.switching import switch_often

    switch_often()  # the serve process runs several busy threads (broker, notifier, creates subscriber)
    from sensorthings.store.leadership import Lease, node_name

    node = os.environ["UDP_NODE"] = getattr(args, "node", None) or node_name(args.port)
    mqtt = _start_mqtt(args, config, store_url, public, shown)
    from udp.load import Watcher

    # several nodes on one store: one of them re-imports a changed file
    watcher = Lease(store_url, "reimports", lambda: Watcher(store_url, config.collections).start().stop,
                    node=node).start() if "reimports" in config.singletons() else None
    retention = Lease(store_url, "retention", lambda: _retention(store_url, config), node=node).start() \
        if "retention" in config.singletons() else None
    seeder = _start_seeder(args) if not args.no_seed else None
    print(f"Urban data platform: {config.title}")
    print(f"  landing page  {base}/")
    print(f"  SensorThings  {base}/v1.1")
    print(f"  OGC API       {base}/ogcapi")
    print(f"  cockpit       {base}/cockpit/")
    print(f"  health        {base}/health")
    print(f"  MQTT          {' '.join(mqtt.endpoints)}")
    print(f"  store         {store_url}")
    sys.stdout.flush()
    from apicommon.heap import freeze_startup

    freeze_startup()  # this process's broker, notifier and creates subscriber run all day
    try:
        # a worker reading large sources at start-up holds the GIL for seconds at a time, so it can miss uvicorn's
        # 5 s health ping and be killed and restarted over and over (seen in bench/features.py --scale city)
        # each answer's head and body in one write to the socket (udp.http_protocol)
        settings = dict(factory=True, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level,
                        access_log=False, proxy_headers=False, timeout_worker_healthcheck=60,
                        http="udp.http_protocol:OneWriteHttpTools")
        from udp import workers

        if args.workers > 1 and workers.spreads():
            workers.run(uvicorn.Config("udp.app:app_from_env", **settings))
        else:
            uvicorn.run("udp.app:app_from_env", **settings)
    finally:
        for lease in (watcher, retention):
            if lease is not None:
                lease.close()
        mqtt.stop()
        if seeder is not None:
            seeder.terminate()
            try:
                seeder.wait(10)
            except subprocess.TimeoutExpired:
                seeder.kill()
    return 0


def _retention(store_url: str, config: Config) -> Callable[[], None]:
    """Start the retention engine on its own store; how to stop it and close that store."""
    from sensorthings.store.base import Store
    from udp.retention import RetentionEngine

    store = Store.open(store_url)
    engine = RetentionEngine(store, config.retention).start()

    def stop() -> None:
        engine.stop()
        store.close()

    return stop


def _start_seeder(args: argparse.Namespace) -> subprocess.Popen:
    """`udp seed` beside the workers, on the same config and store (it dies with this process)."""
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    cmd = [sys.executable, "-m", "udp.cli", "seed", "--store", os.environ["UDP_STORE"], "--log-level", args.log_level,
           "--after", f"http://{host}:{args.port}/health"]
    if args.config:
        cmd += ["--config", args.config]

    def die_with_parent() -> None:
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    return subprocess.Popen(cmd, preexec_fn=die_with_parent)


def _seed(args: argparse.Namespace) -> int:
    """`udp seed`: make the big collections' vector tiles ahead, until SIGTERM."""
    import threading

    from apicommon.stopping import stop_on_signals
    from udp.seed import run

    config = _config(args.config)
    if args.store:
        config.store = args.store
    stop = threading.Event()
    stop_on_signals(stop)
    run(config, stop, args.after)
    return 0


class _Mqtt:
    """What the `udp serve` process runs besides the HTTP workers: the embedded broker (unless an external
    one is named), the subscriber that creates Observations published by clients, the bridge process and
    the indicator engine."""

    def __init__(self, endpoints: list[str], broker: object | None, creator: object, notifier: object,
                 bridge: object | None, indicators: object | None = None, claim: object | None = None) -> None:
        self.endpoints, self.broker, self.creator, self.notifier = endpoints, broker, creator, notifier
        self.bridge, self.indicators, self.claim = bridge, indicators, claim

    def stop(self) -> None:
        if self.indicators is not None:
            self.indicators.close()  # type: ignore[attr-defined]
        if self.bridge is not None:
            self.bridge.terminate()  # type: ignore[attr-defined]
            self.bridge.join(30)  # type: ignore[attr-defined]
        # the notifier first: on an external broker it publishes through the creator's connection
        self.notifier.close()  # type: ignore[attr-defined]
        self.creator.close()  # type: ignore[attr-defined]
        if self.broker is not None:
            self.broker.stop()  # type: ignore[attr-defined]
        if self.claim is not None:
            self.claim.close()  # type: ignore[attr-defined]


def _start_mqtt(args: argparse.Namespace, config: Config, store_url: str, public: str, host: str) -> _Mqtt:
    import secrets

    from mqtt_bridge.bridge import run_process as run_bridge
    from sensorthings.mqtt.broker import EmbeddedBroker
    from sensorthings.mqtt.client import BrokerAddress
    from sensorthings.mqtt.create import Creator
    from sensorthings.mqtt.notify import Notifier
    from sensorthings.service import Service
    from sensorthings.store.base import Store

    url = args.mqtt or config.mqtt_url
    # in the parent, so the schema exists before the workers start; MQTT creates and topic queries are requests
    # like HTTP ones, so their statements meet server.statement_timeout_s too
    store = Store.open(store_url, statement_timeout=config.statement_timeout_s)
    creator = Creator(Service(store), public + "/v1.1", config.mqtt_max_payload_kb * 1024)
    broker = None
    if url:
        endpoints = [url]
    else:
        port = args.mqtt_port if args.mqtt_port is not None else config.mqtt_port
        ws_port = args.mqtt_ws_port if args.mqtt_ws_port is not None else config.mqtt_ws_port
        bind = "0.0.0.0" if args.host in ("0.0.0.0", "::") else args.host
        # the embedded broker hands clients' publishes to the creator itself: no echo of notifications
        explicit = args.mqtt_port is not None or args.mqtt_ws_port is not None
        if not explicit and not (_free(bind, port) and (not ws_port or _free(bind, ws_port))):
            # a default port is taken (often by a Mosquitto already running): take free ones and say so
            taken = port
            port, ws_port = (_any_ports(bind, 2 if ws_port else 1, avoid=args.port) + [0])[:2]
            print(f"  MQTT port {taken} (or {config.mqtt_ws_port}) is taken: the embedded broker uses {port}"
                  + (f" and {ws_port}" if ws_port else ""), file=sys.stderr)
        elif port == 0:  # asked for any free port: chosen here, since clients and the notifier need its number
            port = _any_ports(bind, 1, avoid=args.port)[0]
        from udp.auth import INTERNAL_USER

        secret = os.environ["UDP_INTERNAL_SECRET"]
        gate = None
        if config.auth is not None:
            from udp.auth import Authenticator
            from udp.throttle import Throttled

            auth = Authenticator(config.auth, secret)

            def gate(user: str | None, password: str | None, address: str) -> bool | None:
                if user is None:
                    return False  # anyone may subscribe; publishing takes a user with the write role
                try:
                    found = auth.password(user, password or "", address)
                except Throttled:
                    return None  # too many failed sign-ins: refused like a wrong password (MQTT 3.1.1 has no 429)
                return None if found is None else found.can("write")

        broker = EmbeddedBroker(bind, port, ws_port or None, receiver=creator.create, gate=gate,
                                internal=(INTERNAL_USER, secret))
        broker.max_payload = config.mqtt_max_payload_kb * 1024
        try:
            broker.start()
        except Exception as exc:
            raise SystemExit(f"the embedded MQTT broker cannot listen on {bind}:{port}/{ws_port}: {exc}") from None
        url = f"mqtt://{INTERNAL_USER}:{secret}@127.0.0.1:{port}"
        endpoints = [f"mqtt://{host}:{port}"] + ([f"ws://{host}:{ws_port}"] if ws_port else [])
    os.environ["UDP_MQTT_URL"] = url
    # behind a proxy or in containers the broker's address inside is not the one clients reach
    endpoints = config.mqtt_endpoints or endpoints
    os.environ["UDP_MQTT_ENDPOINTS"] = " ".join(endpoints)
    address = BrokerAddress.parse(url)
    # on an external broker, which other nodes may share, the bridge's process takes the creates and the device
    # messages, in this node's session of the nodes' shared subscription group (mqtt_bridge/sessions.py)
    external = broker is None
    # Observations created by publishing, and by the bridge, notify like any other write
    notifier = Notifier(store, address, public + "/v1.1", f"udp-notify-{socket.gethostname()}-{os.getpid()}-create",
                        limits=config.limits(), qos=config.mqtt_notify_qos)
    store.listeners.append(notifier)
    from sensorthings.store.leadership import Lease, exclusive

    if config.sensors:
        with exclusive(store_url, "provision"):  # nodes starting together make each Thing once
            _provision(Service(store), config)  # here, so that what it makes is notified too
    indicators = None
    if config.indicators:
        from udp.indicators import IndicatorEngine

        # one node of several computes them
        indicators = Lease(store_url, "indicators", lambda: IndicatorEngine(store, config.indicators).start().stop,
                           node=os.environ["UDP_NODE"]).start()
    bridge = claim = None
    if external:
        from sensorthings.store.leadership import Claim, Taken

        try:  # held while this node lives: nodes that do not share the broker's topics would each store every message
            claim = Claim(store_url, "bridge", os.environ["UDP_NODE"], shared=config.mqtt_shared)
        except Taken:
            raise SystemExit("another node takes the device messages from this broker into this store"
                             + (" without mqtt.shared" if config.mqtt_shared else "")
                             + ": nodes that share a broker and a store all say `mqtt: {shared: true}`") from None
    relay = None
    if external:
        # the workers' notifications published through the bridge process's connection, which the broker does not
        # send them back to (sensorthings.mqtt.relay): a socket in the abstract namespace, this user's processes only
        relay = os.environ["UDP_NOTIFY_RELAY"] = f"@udp-relay-{os.getpid()}-{secrets.token_hex(4)}"
    if config.bridge or external:
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        bridge = ctx.Process(target=run_bridge, name="udp-bridge", daemon=True,
                             args=(config.bridge, store_url, address, public + "/v1.1", config.limits(), ready,
                                   os.getpid(), config.mqtt_notify_qos,
                                   config.mqtt_max_payload_kb * 1024 if external else None,
                                   os.environ["UDP_NODE"] if config.mqtt_shared else None, relay))
        bridge.start()
        if not ready.wait(60):
            print("  the bridge did not subscribe within 60 s; serving anyway", file=sys.stderr)
    return _Mqtt(endpoints, broker, creator, notifier, bridge, indicators, claim)


def _provision(service: object, config: Config) -> None:
    """Make the `sensors:` entities, with a progress bar; problems are printed, not fatal."""
    from tqdm import tqdm

    from udp.sensors import provision

    bar = tqdm(desc="sensors", unit=" Things", file=sys.stderr, leave=False, mininterval=0.5,
               disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    out = provision(service, config.sensors, progress)  # type: ignore[arg-type]
    bar.close()
    print(f"  sensors       {out.created} Things created, {out.updated} updated, {out.unchanged} unchanged, "
          f"{out.datastreams} Datastreams added", file=sys.stderr)
    for problem in out.problems[:20]:
        print(f"  sensors problem: {problem}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    """Build the demo city once (progress bar), then serve it with live replayed counts."""
    import threading
    import time
    from pathlib import Path

    from tqdm import tqdm

    from sensorthings.store.base import Store
    from sensorthings.store.leadership import Lease
    from udp.demo.build import CONFIG, DATA, build, feedback_examples, is_built

    started = time.perf_counter()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "udp"
    cache.mkdir(parents=True, exist_ok=True)
    store_url = args.store or f"sqlite:///{cache / 'demo.db'}"
    if args.rebuild and store_url.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(store_url[len("sqlite:///"):] + suffix).unlink(missing_ok=True)
        (cache / "hamburg-map.json").unlink(missing_ok=True)
    config = _config(str(CONFIG))
    store = Store.open(store_url)
    built = is_built(store)
    store.close()
    if not built:
        bar = tqdm(total=4, desc="building the demo city", unit=" step", file=sys.stderr,
                   bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}] {postfix}")

        def step(what: str) -> None:
            bar.set_postfix_str(what)
            bar.update(1 if bar.postfix else 0)

        try:
            build(store_url, cache, config.sensors, step)
        except Exception as exc:
            bar.close()
            print(f"demo: building the demo city failed: {exc}", file=sys.stderr)
            return 1
        bar.update(bar.total - bar.n)
        bar.close()
    feedback_examples(store_url, config)  # (a store built before the demo had feedback gets them too)
    how = "reused" if built else "built"
    if args.port is None:
        bind = "0.0.0.0" if args.host in ("0.0.0.0", "::") else args.host
        args.port = 8080 if _free(bind, 8080) else _any_ports(bind, 1)[0]
        if args.port != 8080:
            print(f"  port 8080 is taken: the demo serves on {args.port}", file=sys.stderr)
    serve_args = argparse.Namespace(
        config=str(CONFIG), host=args.host, port=args.port, workers=1, store=store_url, public_url=None, mqtt=None,
        mqtt_port=args.mqtt_port, mqtt_ws_port=args.mqtt_ws_port, log_level=args.log_level, no_seed=False)

    def live() -> None:
        import httpx

        from mqtt_bridge.replay import read, replay
        from sensorthings.mqtt.client import BrokerAddress, connect

        shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{shown}:{args.port}"
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        print(f"  ready         in {time.perf_counter() - started:.1f} s (demo store {how}: {store_url})", flush=True)
        if args.no_live:
            return
        records = read(DATA / "pedestrian_per_minute_counts_2023-09-19.csv")
        client = connect(BrokerAddress.parse(os.environ["UDP_MQTT_URL"]), f"udp-demo-{os.getpid()}")
        print(f"  live          Melbourne's per-minute pedestrian counts replayed over MQTT at {args.speed:g}x "
              "(topics city/pedestrians/{sensor}/count)", flush=True)
        def run(stop: threading.Event) -> None:
            while not stop.is_set():  # round and round: a demo runs as long as it is watched
                replay(records, client, speed=args.speed, live=True, stop=stop)

        def begin() -> Callable[[], None]:
            stop = threading.Event()
            threading.Thread(target=run, args=(stop,), name="udp-demo-replay", daemon=True).start()
            return stop.set

        # demo nodes sharing a store: one of them replays
        Lease(store_url, "demo-replay", begin, node=os.environ.get("UDP_NODE")).start()

    threading.Thread(target=live, name="udp-demo-live", daemon=True).start()
    return _serve(serve_args)


def _dead_letters(args: argparse.Namespace) -> int:
    from mqtt_bridge import deadletters
    from mqtt_bridge.bridge import redrive
    from sensorthings.store.base import Store

    config = _config(args.config)
    store = Store.open(args.store or config.store)
    deadletters.create_tables(store)
    if args.action == "redrive":
        ok, still = redrive(store, config.bridge)
        print(f"re-driven: {ok} stored, {still} still dead")
        return 0 if still == 0 else 1
    rows = deadletters.pending(store, args.limit)
    print(f"{'id':>6}  {'received (UTC)':<24}  {'topic':<40}  reason")
    for row in rows:
        print(f"{row['id']:>6}  {row['received_at'].isoformat()[:23]:<24}  {row['topic'][:40]:<40}  {row['reason']}")
    print(f"{deadletters.count(store)} dead letters pending")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mqtt_bridge.replay import ReplayError, read, replay
    from sensorthings.mqtt.client import BrokerAddress, connect

    try:
        records = read(Path(args.file))
        address = BrokerAddress.parse(args.mqtt)
    except (OSError, ReplayError, ValueError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    client = connect(address, f"udp-replay-{os.getpid()}")
    total = min(len(records), args.limit or len(records))
    pace = f"{args.rate:g} messages/s" if args.rate else f"{args.speed:g}x real time"
    print(f"replaying {total} readings from {args.file} to {args.mqtt} at {pace}")

    def report(done: int, of: int) -> None:
        width = 30
        filled = int(width * done / of)
        print(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{of}", end="", flush=True)

    progress = replay(records, client, speed=args.speed, rate=args.rate, qos=args.qos, limit=args.limit,
                      report=report)
    client.loop_stop()
    client.disconnect()
    print(f"\npublished {progress.published} messages in {progress.seconds:.1f} s"
          + (f"; {progress.dropped} not taken by the broker" if progress.dropped else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `udp` command."""
    parser = argparse.ArgumentParser(prog="udp", description="Urban data platform")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the platform")
    serve.add_argument("--config", help="config.yml to load")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--store", help="sqlite:///path.db or postgresql://user@host/db (overrides the config)")
    serve.add_argument("--public-url", help="the URL clients reach the platform at, for links")
    serve.add_argument("--mqtt", help="an external broker, mqtt://host:port")
    serve.add_argument("--mqtt-port", type=int, help="the embedded broker's MQTT port (1883; 0: a free one)")
    serve.add_argument("--mqtt-ws-port", type=int, help="the embedded broker's WebSocket port (9001; 0: none)")
    serve.add_argument("--log-level", default="warning")
    serve.add_argument("--no-seed", action="store_true", help="make no vector tiles ahead (`udp seed` not started)")
    serve.add_argument("--node", help="this node's name among several on one store (else UDP_NODE, else host:port)")
    dead = sub.add_parser("dead-letters", help="list or re-drive device messages the bridge could not map")
    dead.add_argument("action", nargs="?", choices=["list", "redrive"], default="list")
    dead.add_argument("--config", help="config.yml (its bridge rules and store)")
    dead.add_argument("--store", help="overrides the config's store")
    dead.add_argument("--limit", type=int, default=100)
    rep = sub.add_parser("replay", help="publish recorded readings as live device messages, shifted to now")
    rep.add_argument("file", help="Melbourne per-minute counts (CSV) or the Hamburg stream (JSON lines, .gz)")
    rep.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="the broker (default mqtt://127.0.0.1:1883)")
    rep.add_argument("--speed", type=float, default=60.0, help="speed-up over real time (default 60)")
    rep.add_argument("--rate", type=float, help="a fixed number of messages per second instead")
    rep.add_argument("--limit", type=int, help="publish at most this many readings")
    rep.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    demo = sub.add_parser("demo", help="serve the demo city (Seoul, Melbourne, Hamburg) with live device messages")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=None, help="HTTP port (default 8080, or a free one)")
    demo.add_argument("--mqtt-port", type=int, default=None, help="embedded broker port (default 1883, or a free one)")
    demo.add_argument("--mqtt-ws-port", type=int, default=None)
    demo.add_argument("--store", help="where the demo city is built (default sqlite:///~/.cache/udp/demo.db)")
    demo.add_argument("--rebuild", action="store_true", help="build the demo store again from the data")
    demo.add_argument("--speed", type=float, default=1.0, help="replay speed-up of the live counts (default 1)")
    demo.add_argument("--no-live", action="store_true", help="no replayed device messages")
    demo.add_argument("--log-level", default="warning")
    imp = sub.add_parser("import-sta", help="copy Things, Datastreams and Observations from another SensorThings "
                                            "server (FROST-Server, iot.hamburg.de) or a saved JSON response")
    from udp import import_sta

    import_sta.add_arguments(imp)
    sub.add_parser("hash-password", help="a password hash for auth.users in config.yml (reads the password)")
    load = sub.add_parser("load", help="import the config's file sources into the store (the new or changed ones)")
    load.add_argument("--config", default="config.yml", help="the config.yml (default ./config.yml)")
    load.add_argument("--store", help="overrides the config's store")
    load.add_argument("--all", action="store_true", help="import every file source again, changed or not")
    load.add_argument("collection", nargs="*", help="only these collections")
    seed = sub.add_parser("seed", help="make the big collections' vector tiles ahead (`udp serve` runs it)")
    seed.add_argument("--config", help="config.yml to load")
    seed.add_argument("--store", help="overrides the config's store")
    seed.add_argument("--log-level", default="warning")
    seed.add_argument("--after", help="start once this URL answers (the platform's /health: its workers first)")
    chk = sub.add_parser("check", help="validate config.yml and try every source in it, without serving")
    chk.add_argument("--config", default="config.yml", help="the config.yml to check (default ./config.yml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper() if hasattr(args, "log_level") else "WARNING")
    logging.getLogger("amqtt").setLevel(logging.ERROR)  # it logs every undelivered internal message
    if args.command == "serve":
        return _serve(args)
    if args.command == "dead-letters":
        return _dead_letters(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "check":
        from udp.check import run as check

        return check(args.config)
    if args.command == "demo":
        return _demo(args)
    if args.command == "load":
        return _load(args)
    if args.command == "seed":
        return _seed(args)
    if args.command == "hash-password":
        import getpass

        from udp.auth import hash_password

        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            print("hash-password: at least 8 characters", file=sys.stderr)
            return 2
        print(hash_password(password))
        return 0
    if args.command == "import-sta":
        return import_sta.run(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
