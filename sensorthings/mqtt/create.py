"""Creating Observations by publishing them (OGC 18-088 section 14.3): a JSON Observation published to
`v1.1/Observations` or `v1.1/Datastreams(7)/Observations` is created as if POSTed there.

One subscriber per platform does this (in the `udp serve` process, not in each worker). Its
session is persistent, so a QoS 1 Observation published while the platform restarts is
delivered when it is back; paho acknowledges a message only after the handler has returned,
that is after the Observation is committed.
"""

from __future__ import annotations

import logging
import re

import orjson
import paho.mqtt.client as mqtt

from sensorthings.mqtt.client import BrokerAddress, connect
from sensorthings.service import ApiRequest, Service

log = logging.getLogger("udp.mqtt.create")
TOPICS = ("v1.1/Observations", "v1.1/+/Observations")


CREATE_TOPIC = re.compile(r"^v1\.1/(Observations|[A-Za-z]+\(\d+\)/Observations)$")


class Creator:
    """Turns Observations published by clients into created entities.

    With the embedded broker it is called by the broker itself for every publish (see
    sensorthings.mqtt.broker), so it never receives the platform's own notifications; with an
    external broker it subscribes (`subscribe`) and passes notifications over by their content.
    """

    def __init__(self, service: Service, base: str, max_payload: int = 256 * 1024) -> None:
        self.service = service
        self.max_payload = max_payload  # mqtt.max_payload_kb, in bytes
        self.base = base.rstrip("/")
        self.created = 0
        self.rejected = 0
        self.client: mqtt.Client | None = None

    def subscribe(self, address: BrokerAddress, client_id: str) -> None:
        """Take creates from an external broker, in a persistent session."""
        self.client = connect(address, client_id, on_message=lambda m: self.create(m.topic, bytes(m.payload)),
                              clean_session=False, subscriptions=[(t, 1) for t in TOPICS])

    def create(self, topic: str, payload: bytes) -> None:
        """Create the Observation a message carries; the platform's own notifications are passed over."""
        if not CREATE_TOPIC.match(topic):
            return
        # notifications share these topics and always start with their selfLink: skip them unparsed
        if payload.startswith(b'{"@iot.selfLink"'):
            return
        if len(payload) > self.max_payload:
            self._reject(topic, f"the payload of {len(payload)} bytes is over the limit of "
                                f"{self.max_payload // 1024} KiB (mqtt.max_payload_kb)")
            return
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._reject(topic, "the payload is not JSON")
            return
        # notifications on these topics carry the created entity's id: they are ours, not a create
        if isinstance(data, dict) and ("@iot.id" in data or "@iot.selfLink" in data):
            return
        res = self.service.handle(ApiRequest("POST", topic.split("/", 1)[1], body=payload, base=self.base))
        if res.status >= 400:
            self._reject(topic, res.body.get("message", "") if isinstance(res.body, dict) else str(res.status))
        else:
            self.created += 1

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.warning("Observation published to %s not created: %s", topic, reason)

    def close(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
