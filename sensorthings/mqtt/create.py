"""Creating Observations by publishing them (OGC 18-088 section 14.3): a JSON Observation published to
`v1.1/Observations` or `v1.1/Datastreams(7)/Observations` is created as if POSTed there.

One subscriber per platform does this (in the `udp serve` process, not in each worker). Its
session is persistent, so a QoS 1 Observation published while the platform restarts is
delivered when it is back; a message is acknowledged only after its Observation is committed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
import paho.mqtt.client as mqtt

from sensorthings.mqtt.client import BrokerAddress, BufferedClient, Incoming, connect
from sensorthings.pending import Pending
from sensorthings.service import ApiRequest, ApiResponse, Service
from sensorthings.store.group_commit import Written
from sensorthings.store.observations import ObservationRow

log = logging.getLogger("udp.mqtt.create")
TOPICS = ("v1.1/Observations", "v1.1/+/Observations")


CREATE_TOPIC = re.compile(r"^v1\.1/(Observations|[A-Za-z]+\(\d+\)/Observations)$")
# how every notification on these topics starts (its selfLink first), and no create does
NOTIFICATION_START = b'{"@iot.selfLink"'


GATHER_MAX = 1000  # creates handed on together at most, should a read bring more


@dataclass(slots=True)
class _Create:
    """A create taken from an external broker, waiting for the end of its read (`Creator.hand_on`)."""

    topic: str
    mid: int
    qos: int
    row: ObservationRow


class Creator:
    """Turns Observations published by clients into created entities.

    With the embedded broker it is called by the broker itself for every publish (see
    sensorthings.mqtt.broker), so it never receives the platform's own notifications; with an
    external broker it subscribes (`subscribe`) and passes notifications over by their content.
    Either way a create goes to the group-commit writer and the message is acknowledged once it is
    committed (or refused), so that many publishes share one transaction.
    """

    def __init__(self, service: Service, base: str, max_payload: int = 256 * 1024) -> None:
        self.service = service
        self.max_payload = max_payload  # mqtt.max_payload_kb, in bytes
        self.base = base.rstrip("/")
        self.created = 0
        self.rejected = 0
        self.received = 0  # messages from an external broker
        self.client: BufferedClient | None = None
        self._gathered: list[_Create] = []  # the creates of the read under way (`hand_on`)

    def subscribe(self, address: BrokerAddress, client_id: str) -> None:
        """Take creates from an external broker (MQTT 5), in a persistent session; each message is acknowledged once
        its Observation is committed. Notifications published through `self.client` (Notifier's `client`) are
        never sent back to it (No Local): they share the creates' topics."""
        connect(address, client_id, on_message=self.on_message, clean_session=False, manual_ack=True,
                subscriptions=[(t, 1) for t in TOPICS], no_local=True, before_start=self.take_from)

    def take_from(self, client: BufferedClient) -> None:
        """Acknowledge creates through `client`, which takes them (before it connects). The notifications of other
        connections (the HTTP workers') come back on it, the creates' topics being theirs: it acknowledges them as it
        reads them, in runs, and hands none on (`BufferedClient.passes_over`). The creates one read brings go to the
        writer together at its end (`after_read`)."""
        self.client = client
        client.passes_over = NOTIFICATION_START
        client.after_read = self.hand_on

    def on_message(self, msg: Incoming) -> None:
        """A message from the external broker on the creates' topics (`TOPICS`), acknowledged through `self.client`
        once its Observation is committed (or refused). Within a read its Observation waits for the read's others
        (`hand_on`): one submission to the writer and one write of their acknowledgements, where each had its own."""
        self.received += 1
        client, mid, qos = self.client, msg.mid, msg.qos
        topic, payload = msg.topic, bytes(msg.payload)
        data = self._parse(topic, payload)
        made: ObservationRow | ApiResponse | None = None
        if data is not None:
            try:
                made = self.service.observation_row(topic.split("/", 1)[1], data)
            except Exception as exc:  # noqa: BLE001 - refused and acknowledged, as `_create` does
                made = ApiResponse(500, {"message": f"{type(exc).__name__}: {exc}"})
        if isinstance(made, ObservationRow):
            self._gathered.append(_Create(topic, mid, qos, made))
            if client is None or not client.reading() or len(self._gathered) >= GATHER_MAX:
                self.hand_on()
            return
        done: Pending[ApiResponse] | None = None
        if isinstance(made, ApiResponse):
            self._refused(topic, made)
        elif data is not None:  # a deep insert: a transaction of its own
            done = self._create(topic, payload, data)
        if qos == 0 or client is None:
            return
        if done is None:
            client.ack(mid, qos)
        else:
            done.add_done_callback(lambda f: self._ack(client, mid, qos, f))

    def hand_on(self) -> None:
        """Submit the Observations gathered from a read to the writer, as one submission in which each is written or
        refused on its own; they are counted and acknowledged together once committed."""
        gathered, self._gathered = self._gathered, []
        if gathered:
            self.service.write_rows([c.row for c in gathered]).add_done_callback(
                lambda f: self._written(gathered, f))

    def _written(self, gathered: list[_Create], done: Pending[Written]) -> None:
        exc = done.exception()
        if exc is not None:
            if len(gathered) > 1:
                # one the database refuses as a whole (a value it cannot store) must not hold back the others, nor come
                # back with them for ever: each is written alone
                for create in gathered:
                    self.service.write_rows([create.row]).add_done_callback(
                        lambda f, create=create: self._written([create], f))
                return
            res = self.service.refusal(exc) if isinstance(exc, Exception) else None
            if res is None or res.status >= 500:
                # the database down: left unacknowledged, the broker delivers it again when the session resumes
                self.rejected += 1
                log.warning("an Observation published to %s not created (left for the broker to deliver again): "
                            "%s: %s", gathered[0].topic, type(exc).__name__, exc)
                return
            self._refused(gathered[0].topic, res)  # and acknowledged: sent again, it would fail again
        else:
            reasons = done.result().reasons
            for i, create in enumerate(gathered):
                reason = reasons.get(i)
                if reason is None:
                    self.created += 1
                else:
                    self._reject(create.topic, reason)
        client = self.client
        if client is None:
            return
        client.ack_many([c.mid for c in gathered if c.qos == 1])
        for create in gathered:
            if create.qos == 2:
                client.ack(create.mid, 2)

    @staticmethod
    def _ack(client: mqtt.Client, mid: int, qos: int, answer: Pending[ApiResponse]) -> None:
        # the database down (503): left unacknowledged, the broker delivers it again when the session resumes
        if answer.exception() is None and answer.result().status < 500:
            client.ack(mid, qos)

    def create(self, topic: str, payload: bytes) -> Pending[ApiResponse] | None:
        """Create the Observation a message carries: the answer once committed, or None when there is nothing
        to wait for (the platform's own notifications are passed over, bad messages refused at once)."""
        data = self._parse(topic, payload)
        return None if data is None else self._create(topic, payload, data)

    def _parse(self, topic: str, payload: bytes) -> Any | None:
        """The JSON a create carries; None for what is no create (a notification) or is refused (counted, logged)."""
        if not CREATE_TOPIC.match(topic):
            return None
        # notifications share these topics and always start with their selfLink: skip them unparsed
        if payload.startswith(NOTIFICATION_START):
            return None
        if len(payload) > self.max_payload:
            self._reject(topic, f"the payload of {len(payload)} bytes is over the limit of "
                                f"{self.max_payload // 1024} KiB (mqtt.max_payload_kb)")
            return None
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self._reject(topic, "the payload is not JSON")
            return None
        # notifications on these topics carry the created entity's id: they are ours, not a create
        if isinstance(data, dict) and ("@iot.id" in data or "@iot.selfLink" in data):
            return None
        return data

    def _create(self, topic: str, payload: bytes, data: Any) -> Pending[ApiResponse] | None:
        try:
            answer = self.service.create_observation(ApiRequest("POST", topic.split("/", 1)[1], body=payload,
                                                                base=self.base), data)
        except Exception as exc:  # noqa: BLE001 - a database fault must not stop the broker's loop
            self._reject(topic, f"{type(exc).__name__}: {exc}")
            return None
        answer.add_done_callback(lambda f: self._count(topic, f))
        return answer

    def _count(self, topic: str, answer: Pending[ApiResponse]) -> None:
        res = answer.result() if answer.exception() is None else ApiResponse(500)
        if res.status >= 400:
            self._refused(topic, res)
        else:
            self.created += 1

    def _refused(self, topic: str, res: ApiResponse) -> None:
        self._reject(topic, res.body.get("message", "") if isinstance(res.body, dict) else str(res.status))

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.warning("Observation published to %s not created: %s", topic, reason)

    def close(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
