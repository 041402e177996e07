"""Several `udp serve` nodes on one store (sensorthings/store/leadership.py): each singleton (the indicator engine, the
re-imports) runs on one node, every node tells the same holder, the `sensors:` Things are made once when the nodes
start together, and when the holder is killed another node takes its singletons within seconds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_URL, create_pg
from tests.harness import Udp
from tests.test_indicators import CONFIG, GANGNAM, JONGNO

TAKEOVER_S = 15.0


def _singletons(node: Udp) -> dict[str, str | None]:
    return httpx.get(f"{node.url}/health", timeout=30).json()["node"]["singletons"]


def test_one_node_runs_each_singleton_and_another_takes_over(store_url: str, tmp_path: Path) -> None:
    rows = ["id,lon,lat", f"g1,{GANGNAM[0][0]},{GANGNAM[0][1]}", f"g2,{GANGNAM[1][0]},{GANGNAM[1][1]}",
            f"j1,{JONGNO[0]},{JONGNO[1]}"]
    (tmp_path / "sensors.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "config.yml").write_text(CONFIG, encoding="utf-8")
    # both start at once: the `sensors:` Things are made by one while the other waits, then found by it
    nodes = {name: Udp("serve", "--config", str(tmp_path / "config.yml"), "--store", store_url, "--node", name,
                       log=tmp_path / f"node-{name}.log") for name in ("a", "b")}
    try:
        for node in nodes.values():
            node.wait(120)
        held = _singletons(nodes["a"])
        assert set(held) == {"indicators", "reimports"} and set(held.values()) <= {"a", "b"}
        assert _singletons(nodes["b"]) == held  # every node tells the same
        things = httpx.get(f"{nodes['a'].url}/v1.1/Things", params={"$filter": "startswith(name, 'air ')"},
                           timeout=30).json()["value"]
        assert sorted(t["name"] for t in things) == ["air g1", "air g2", "air j1"]
        # a read on one node sees a write made on the other at once, through the response cache
        on_b = httpx.Client(base_url=f"{nodes['b'].url}/v1.1/", timeout=30)
        for _ in range(2):  # the second answer comes from b's cache
            assert on_b.get("Things", params={"$filter": "name eq 'written on a'"}).json()["value"] == []
        made = httpx.post(f"{nodes['a'].url}/v1.1/Things", json={"name": "written on a", "description": "d"},
                          timeout=30)
        assert made.status_code == 201
        assert [t["name"] for t in on_b.get("Things", params={"$filter": "name eq 'written on a'"}).json()["value"]] \
            == ["written on a"]
        # the holder of the indicators dies without a word: the other node takes what it held
        holder = held["indicators"]
        other = next(n for n in nodes if n != holder)
        os.killpg(nodes[holder].pid, signal.SIGKILL)
        nodes[holder].proc.wait(10)
        start = time.monotonic()
        while _singletons(nodes[other]) != {"indicators": other, "reimports": other}:
            assert time.monotonic() - start < TAKEOVER_S, _singletons(nodes[other])
            time.sleep(0.2)
        # and it runs them: the indicator engine makes its collections' Things (made already: found, not doubled)
        names = [t["name"] for t in httpx.get(f"{nodes[other].url}/v1.1/Things", params={"$top": 1000},
                                              timeout=30).json()["value"]]
        assert len(names) == len(set(names))
    finally:
        for node in nodes.values():
            node.stop()


def _publish(port: int, sensor: str, values: range, pace: float = 0.001) -> None:
    """QoS 1 device messages, each acknowledged by the broker, at about 1/pace a second."""
    import orjson
    import paho.mqtt.client as mqtt

    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{sensor}-{values.start}")
    device.connect("127.0.0.1", port)
    device.loop_start()
    try:
        for i in values:
            device.publish(f"city/pedestrians/{sensor}/count",
                           orjson.dumps({"count": i, "time": "2026-05-01T00:00:00Z"}), qos=1).wait_for_publish(10)
            time.sleep(pace)
    finally:
        device.loop_stop()
        device.disconnect()


def test_nodes_share_the_device_messages_and_adopt_a_killed_nodes_session(tmp_path: Path) -> None:
    """Two nodes on one PostgreSQL and one Mosquitto with `mqtt.shared`: the broker hands each device message to
    one node's session. One node killed mid-stream: the other adopts its session (with what the broker kept for
    it and what it had received but not committed) and takes its share; the node restarted gets its session
    back. Every message is stored once."""
    from tests.harness import MOSQUITTO, Mosquitto
    from tests.test_bridge import RULES, add_thing, results

    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: nodes share a PostgreSQL store")
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (Debian package mosquitto)")
    from sensorthings.store.leadership import holders

    # as docker/mosquitto/mosquitto.conf: a session whose node is gone keeps all it is sent until adopted
    broker = Mosquitto("max_queued_messages 0", persistence=True)
    db = create_pg(PG_URL)
    url = f"mqtt://127.0.0.1:{broker.port}"
    (tmp_path / "config.yml").write_text(f"title: Nodes\nmqtt: {{url: '{url}', shared: true}}\n{RULES}")

    def node(name: str) -> Udp:
        return Udp("serve", "--config", str(tmp_path / "config.yml"), "--store", db.url, "--mqtt", url,
                   "--node", name, log=tmp_path / f"node-{name}-{time.time_ns()}.log").wait(120)

    nodes = {"a": node("a"), "b": node("b")}
    try:
        sta = httpx.Client(base_url=f"{nodes['b'].url}/v1.1/", timeout=30)
        add_thing(sta, "shared counter", ["pedestrians shared total"])
        assert holders(db.url, ["bridge-session:a", "bridge-session:b"]) == {"bridge-session:a": "a",
                                                                               "bridge-session:b": "b"}
        _publish(broker.port, "shared", range(0, 400))
        wait_until_stored = time.monotonic() + 30
        while len(results(sta, "pedestrians shared total")) < 400 and time.monotonic() < wait_until_stored:
            time.sleep(0.2)
        stored = results(sta, "pedestrians shared total")
        assert sorted(stored) == list(range(400))
        # both nodes took a share: each one's session received some (the broker alternates)
        # a node killed mid-stream, by SIGKILL: what it held uncommitted and its share meanwhile are not lost
        import threading

        sender = threading.Thread(target=_publish, args=(broker.port, "shared", range(400, 1400)))
        sender.start()
        time.sleep(0.3)
        os.killpg(nodes["a"].pid, signal.SIGKILL)
        nodes["a"].proc.wait(10)
        sender.join(60)
        deadline = time.monotonic() + 60
        while len(results(sta, "pedestrians shared total")) < 1400 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert holders(db.url, ["bridge-session:a"]) == {"bridge-session:a": "b"}  # adopted
        stored = results(sta, "pedestrians shared total")
        assert sorted(stored) == list(range(1400)), sorted(set(range(1400)) - set(stored))
        # the node comes back: it gets its session back from the adopter
        nodes["a"] = node("a")
        assert holders(db.url, ["bridge-session:a"]) == {"bridge-session:a": "a"}
        _publish(broker.port, "shared", range(1400, 1800))
        deadline = time.monotonic() + 30
        while len(results(sta, "pedestrians shared total")) < 1800 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert sorted(results(sta, "pedestrians shared total")) == list(range(1800))
        # a node that does not say mqtt.shared is refused: it would store every message again
        (tmp_path / "alone.yml").write_text(f"title: Alone\nmqtt: {{url: '{url}'}}\n{RULES}")
        import subprocess
        import sys

        alone = subprocess.run([sys.executable, "-m", "udp.cli", "serve", "--config", str(tmp_path / "alone.yml"),
                                "--store", db.url, "--mqtt", url, "--port", "0", "--node", "c"],
                               capture_output=True, text=True, timeout=120)
        assert alone.returncode != 0 and "mqtt: {shared: true}" in alone.stderr, alone.stderr[-2000:]
    finally:
        for n in nodes.values():
            n.stop()
        db.drop()
        broker.close()
