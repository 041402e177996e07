"""Creating Observations by publishing them (OGC 18-088 section 14.3): a JSON Observation published to
`v1.1/Observations` or `v1.1/Datastreams(7)/Observations` is created as if POSTed there.

One subscriber per platform does this (in the `udp serve` process, not in each worker). Its
session is persistent, so a QoS 1 Observation published while the platform restarts is
delivered when it is back; paho acknowledges a message only after the handler has returned,
that is after the Observation is committed.
"""

from __future__ import annotations

import logging

import orjson
import paho.mqtt.client as mqtt

from sensorthings.mqtt.client import BrokerAddress, connect
from sensorthings.service import ApiRequest, Service

log = logging.getLogger("udp.mqtt.create")
TOPICS = ("v1.1/Observations", "v1.1/+/Observations")


class Creator:
    """Turns Observations published by clients into created entities."""

    def __init__(self, service: Service, address: BrokerAddress, base: str, client_id: str = "udp-sta-create") -> None:
        self.service = service
        self.base = base.rstrip("/")
        self.created = 0
        self.rejected = 0
        self.client = connect(address, client_id, on_message=self.handle, clean_session=False,
                              subscriptions=[(t, 1) for t in TOPICS])

    def handle(self, msg: mqtt.MQTTMessage) -> None:
        """Create the Observation a message carries; the platform's own notifications are passed over."""
        # notifications share these topics and always start with their selfLink: skip them unparsed
        if msg.payload.startswith(b'{"@iot.selfLink"'):
            return
        try:
            data = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            self._reject(msg.topic, "the payload is not JSON")
            return
        # notifications on these topics carry the created entity's id: they are ours, not a create
        if isinstance(data, dict) and ("@iot.id" in data or "@iot.selfLink" in data):
            return
        res = self.service.handle(ApiRequest("POST", msg.topic.split("/", 1)[1], body=msg.payload, base=self.base))
        if res.status >= 400:
            self._reject(msg.topic, res.body.get("message", "") if isinstance(res.body, dict) else str(res.status))
        else:
            self.created += 1

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.warning("Observation published to %s not created: %s", topic, reason)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()
