"""Writing bridge readings to an external SensorThings server (FROST-Server, istSOS, another platform)
over HTTP, with the dataArray extension: one CreateObservations request per server and batch."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import httpx

from mqtt_bridge.mapping import Reading
from sensorthings.times import format_instant, format_time

log = logging.getLogger("udp.bridge.forward")
COMPONENTS = ["phenomenonTime", "resultTime", "result", "parameters"]


class ForwardUnavailable(RuntimeError):
    """The external server cannot be reached or fails (5xx): hold the batch and retry."""


class Forwarder:
    """Resolves Datastreams on external servers and posts readings there."""

    def __init__(self, timeout: float = 30) -> None:
        self.http = httpx.Client(timeout=timeout, headers={"Accept": "application/json"})
        self.ids: dict[tuple[str, str, bool, bool], int | None] = {}

    def _stream_id(self, root: str, reading: Reading) -> int | None:
        key = (root, reading.stream, reading.by_id, reading.multi)
        if key in self.ids:
            return self.ids[key]
        if reading.by_id:
            found: int | None = int(reading.stream) if reading.stream.isdigit() else None
        else:
            name = reading.stream.replace("'", "''")
            kind = "MultiDatastreams" if reading.multi else "Datastreams"
            res = self._get(f"{root}/{kind}", {"$filter": f"name eq '{name}'", "$select": "id", "$top": "1"})
            value = res.get("value") or []
            found = value[0]["@iot.id"] if value else None
        self.ids[key] = found
        return found

    def _get(self, url: str, params: dict[str, str]) -> Any:
        try:
            res = self.http.get(url, params=params)
        except httpx.HTTPError as exc:
            raise ForwardUnavailable(f"{url}: {exc}") from None
        if res.status_code >= 500:
            raise ForwardUnavailable(f"{url}: HTTP {res.status_code}")
        return res.json() if res.status_code == 200 else {}

    def send(self, items: list[tuple[int, Reading]]) -> dict[int, str]:
        """Post readings (tagged with their message's index); the reasons of those the servers refused."""
        refused: dict[int, str] = {}
        groups: dict[tuple[str, int, bool], list[tuple[int, Reading]]] = defaultdict(list)
        for tag, reading in items:
            root = reading.forward or ""
            stream_id = self._stream_id(root, reading)
            if stream_id is None:
                kind = "MultiDatastream" if reading.multi else "Datastream"
                refused[tag] = f"unknown {kind} {reading.stream!r} on {root}"
                continue
            groups[(root, stream_id, reading.multi)].append((tag, reading))
        for root in {g[0] for g in groups}:
            body, tags = [], []
            for (r, stream_id, multi), group in groups.items():
                if r != root:
                    continue
                rows = [[format_time(x.phenomenon_start, x.phenomenon_end),
                         None if x.result_time is None else format_instant(x.result_time), x.result, x.parameters]
                        for _, x in group]
                body.append({"MultiDatastream" if multi else "Datastream": {"@iot.id": stream_id},
                             "components": COMPONENTS, "dataArray@iot.count": len(rows), "dataArray": rows})
                tags.extend(t for t, _ in group)
            try:
                res = self.http.post(f"{root}/CreateObservations", json=body)
            except httpx.HTTPError as exc:
                raise ForwardUnavailable(f"{root}: {exc}") from None
            if res.status_code >= 500:
                raise ForwardUnavailable(f"{root}/CreateObservations: HTTP {res.status_code}")
            if res.status_code != 201:
                for tag in tags:
                    refused[tag] = f"refused by {root}: HTTP {res.status_code} {res.text[:200]}"
                continue
            for tag, link in zip(tags, res.json(), strict=False):
                if not isinstance(link, str) or link.startswith("error"):
                    refused[tag] = f"refused by {root}: {link}"
        return refused

    def close(self) -> None:
        """Close the HTTP connections."""
        self.http.close()
