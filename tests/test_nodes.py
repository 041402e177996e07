"""Several `udp serve` nodes on one store (udp/leadership.py): each singleton (the indicator engine, the
re-imports) runs on one node, every node tells the same holder, the `sensors:` Things are made once when the nodes
start together, and when the holder is killed another node takes its singletons within seconds."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PG_URL, create_pg
from tests.harness import Udp
from tests.test_indicators import CONFIG, GANGNAM, JONGNO

TAKEOVER_S = 15.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'udp.db'}"
        return
    if not PG_URL:
        pytest.skip("UDP_TEST_PG is not set: PostgreSQL store tests skipped")
    db = create_pg(PG_URL)
    try:
        yield db.url
    finally:
        db.drop()


def _singletons(node: Udp) -> dict[str, str | None]:
    return httpx.get(f"{node.url}/health", timeout=30).json()["node"]["singletons"]


def test_one_node_runs_each_singleton_and_another_takes_over(store: str, tmp_path: Path) -> None:
    rows = ["id,lon,lat", f"g1,{GANGNAM[0][0]},{GANGNAM[0][1]}", f"g2,{GANGNAM[1][0]},{GANGNAM[1][1]}",
            f"j1,{JONGNO[0]},{JONGNO[1]}"]
    (tmp_path / "sensors.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "config.yml").write_text(CONFIG, encoding="utf-8")
    # both start at once: the `sensors:` Things are made by one while the other waits, then found by it
    nodes = {name: Udp("serve", "--config", str(tmp_path / "config.yml"), "--store", store, "--node", name,
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
