"""`udp replay`: recorded Melbourne and Hamburg readings become live device messages, shifted to now."""

from __future__ import annotations

import gzip
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from mqtt_bridge.replay import read
from tests.conftest import DEMO_DATA, ROOT, TEST_DATA, start_server, stop_server
from tests.test_bridge import add_thing, results, wait_for

MELBOURNE = DEMO_DATA / "pedestrian_per_minute_counts_2023-09-19.csv"
HAMBURG = TEST_DATA / "iot_hamburg_multimodal_sample.jsonl.gz"
CONFIG = """title: Replay test
bridge:
  - topic: city/pedestrians/{sensor}/count
    each: $.counts
    datastream: "pedestrians {sensor} {key}"
    phenomenonTime: $.time
  - topic: hamburg/{source}/{id}
    datastream: "hamburg {source} {id}"
    result: $.result
    phenomenonTime: $.phenomenonTime
    resultTime: $.resultTime
"""


@pytest.fixture
def samples(tmp_path: Path) -> tuple[Path, Path]:
    if not MELBOURNE.exists() or not HAMBURG.exists():
        pytest.skip("../shared/data is not beside the checkout")
    mel = tmp_path / "mel.csv"
    lines = MELBOURNE.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [ln for ln in lines[1:] if ln.split(",")[0] in ("3", "4")][:40]
    mel.write_text("\n".join([header, *rows]) + "\n")
    ham = tmp_path / "ham.jsonl.gz"
    with gzip.open(HAMBURG, "rt") as src:
        picked = [ln for ln in (src.readline() for _ in range(400)) if '"source":"cycle-counters"' in ln][:30]
    with gzip.open(ham, "wt") as out:
        out.writelines(picked)
    return mel, ham


def test_read_both_formats(samples: tuple[Path, Path]) -> None:
    mel, ham = samples
    records = read(mel)
    assert len(records) == 40 and records[0].topic.startswith("city/pedestrians/")
    assert set(records[0].payload["counts"]) == {"direction_1", "direction_2", "total"}
    assert [r.at for r in records] == sorted(r.at for r in records)
    hamburg = read(ham)
    assert len(hamburg) == 30 and hamburg[0].topic.startswith("hamburg/cycle-counters/")


def test_replay_through_the_bridge(samples: tuple[Path, Path], tmp_path: Path) -> None:
    mel, ham = samples
    config = tmp_path / "city.yml"
    config.write_text(CONFIG)
    srv = start_server(f"sqlite:///{tmp_path / 'r.db'}", "sqlite", ["--config", str(config)])
    try:
        sta = httpx.Client(base_url=srv.sta + "/", timeout=30)
        sensors = sorted({r.topic.split("/")[2] for r in read(mel)})
        for sensor in sensors:
            add_thing(sta, f"sensor {sensor}", [f"pedestrians {sensor} {k}" for k in ("direction_1", "direction_2",
                                                                                      "total")])
        streams = sorted({r.topic.split("/", 1)[1].replace("/", " ") for r in read(ham)})
        add_thing(sta, "hamburg counters", [f"hamburg {s}" for s in streams], "OM_Observation")
        started = datetime.now(UTC)
        for path in (mel, ham):
            out = subprocess.run([sys.executable, "-m", "udp.cli", "replay", str(path), "--rate", "400",
                                  "--mqtt", f"mqtt://127.0.0.1:{srv.mqtt_port}"], capture_output=True, text=True,
                                 cwd=ROOT, timeout=120)
            assert out.returncode == 0, out.stderr
            assert "published" in out.stdout
        expected = {s: sum(1 for r in read(mel) if r.topic.split("/")[2] == s) for s in sensors}
        for sensor, n in expected.items():
            wait_for(lambda s=sensor, n=n: len(results(sta, f"pedestrians {s} total")) == n)
        wait_for(lambda: sum(len(results(sta, f"hamburg {s}")) for s in streams) == 30)
        newest = sta.get("Observations", params={"$orderby": "phenomenonTime desc", "$top": "1"}).json()["value"][0]
        newest_time = datetime.fromisoformat(newest["phenomenonTime"].split("/")[0])
        # shifted to now: the newest reading is about when the replay ended, not in 2023
        assert abs((newest_time - started).total_seconds()) < 120
    finally:
        stop_server(srv)
