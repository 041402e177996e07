"""The embedded MQTT 3.1.1 broker (amqtt), with a TCP and a WebSocket listener, run in a thread of
the `udp serve` process so that every worker shares it.

It also tells the platform which SensorThings topics clients subscribe to, so that notifications
can go to query topics (`v1.1/Observations?$select=result`) and property topics, which only
a broker that reports its subscriptions makes possible. That report, on `udp-internal/subscriptions`, is
the platform's own: the topics under `udp-internal/` reach, and take publishes from, only the platform's
clients (signed in as its internal user with the secret made at start-up), never a client subscribing to `#`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from amqtt.broker import Action, Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import INCOMING

from sensorthings.pending import Pending

log = logging.getLogger("udp.mqtt.broker")

# retained: the SensorThings topics that have subscribers now, as a JSON array
INTERNAL_PREFIX = "udp-internal/"  # the platform's own topics: only its internal clients see and publish them
SUBSCRIPTIONS_TOPIC = INTERNAL_PREFIX + "subscriptions"
STA_PREFIX = "v1.1/"
_PLATFORM = "udp_platform"  # the mark on a session signed in as the platform's internal user


def is_platform(session: Any) -> bool:
    """Whether a broker session is one of the platform's own clients (signed in with the internal secret)."""
    return bool(getattr(session, _PLATFORM, False))


def _internal_topic(topic: str) -> bool:
    return topic.startswith(INTERNAL_PREFIX) or topic == INTERNAL_PREFIX.rstrip("/")


# what a broker hands every client publish to: the topic and payload in, the create's completion out (None:
# nothing to wait for)
Receiver = Callable[[str, bytes], "Pending[Any] | None"]


class SubscriptionPlugin(BasePlugin):
    """Counts subscribers per SensorThings topic and publishes the set whenever it changes."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.counts: dict[str, int] = {}
        self.by_client: dict[str, set[str]] = {}
        self.pending: asyncio.Task | None = None
        self.dirty = False

    @dataclass
    class Config:
        """Which broker this plugin serves."""

        broker_id: int | None = None

    async def on_broker_post_start(self, **_: Any) -> None:
        # said at once, not at the first subscription: until they hear it, notifiers publish everything
        await self._announce()

    async def _announce(self) -> None:
        # a page subscribing to hundreds of topics would otherwise send the whole list hundreds of times
        self.dirty = True
        if self.pending is None or self.pending.done():
            self.pending = asyncio.get_running_loop().create_task(self._announcer())

    async def _announcer(self) -> None:
        while self.dirty:
            self.dirty = False
            await asyncio.sleep(0.05)
            data = orjson.dumps(sorted(t for t, n in self.counts.items() if n > 0))
            await self.context.retain_message(SUBSCRIPTIONS_TOPIC, data, 1)
            await self.context.broadcast_message(SUBSCRIPTIONS_TOPIC, data, 1)

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        if not topic.startswith(STA_PREFIX):
            return
        mine = self.by_client.setdefault(client_id, set())
        if topic not in mine:
            mine.add(topic)
            self.counts[topic] = self.counts.get(topic, 0) + 1
            await self._announce()

    async def on_broker_client_unsubscribed(self, *, client_id: str, topic: str) -> None:
        mine = self.by_client.get(client_id, set())
        if topic in mine:
            mine.discard(topic)
            self.counts[topic] -= 1
            await self._announce()

    async def on_broker_client_disconnected(self, *, client_id: str, **_: Any) -> None:
        for topic in self.by_client.pop(client_id, set()):
            self.counts[topic] -= 1
        await self._announce()


# how a broker decides who may publish: (user name, password, client address) → may the client publish?
# None: refused login (a wrong password, or too many failed ones)
GATEKEEPERS: dict[int, Callable[[str | None, str | None, str], bool | None]] = {}
# the platform's own clients sign in with (user name, secret)
INTERNALS: dict[int, tuple[str, str]] = {}


class GatePlugin(BaseAuthPlugin, BaseTopicPlugin):
    """Logins and rights on the embedded broker: the platform's internal user (with its secret) may do
    anything; other clients, from the platform's `auth:` users when there is a gate: anyone may connect and
    subscribe (reading is public), a wrong password is refused, publishing takes `write` (without a gate,
    the platform runs open and anyone may publish). Nobody but the platform sees or publishes `udp-internal/`."""

    @dataclass
    class Config:
        """Which broker this plugin serves (its id in GATEKEEPERS and INTERNALS)."""

        broker_id: int | None = None

    def __init__(self, context: Any) -> None:
        BaseAuthPlugin.__init__(self, context)
        self.gate = GATEKEEPERS.get(self.config.broker_id)  # type: ignore[arg-type]
        self.internal = INTERNALS.get(self.config.broker_id)  # type: ignore[arg-type]
        self.writers: dict[str, bool] = {}

    async def authenticate(self, *, session: Any) -> bool | None:
        user = session.username
        platform = self.internal is not None and user == self.internal[0] and \
            hmac.compare_digest(self.internal[1].encode(), (session.password or "").encode())
        setattr(session, _PLATFORM, platform)
        if platform:
            self.writers[session.client_id] = True
            return True
        if self.internal is not None and user == self.internal[0]:
            return False
        if self.gate is None:
            self.writers[session.client_id] = True
            return True
        # a password check may take a PBKDF2 run: not on the broker's event loop
        may_write = await asyncio.get_running_loop().run_in_executor(
            None, self.gate, user, session.password, str(session.remote_address or ""))
        if may_write is None:
            return False
        self.writers[session.client_id] = may_write
        return True

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None,
                              action: Any = None) -> bool | None:
        if session is None:
            return None
        if is_platform(session):
            return True
        if topic is not None and _internal_topic(topic):
            return False  # a filter such as `#` may subscribe, but receives none of these
        if action == Action.PUBLISH:
            return self.writers.get(session.client_id, False)
        return True


class _CommitAckHandler(BrokerProtocolHandler):
    """A client connection whose QoS 1 publishes are acknowledged only once the broker says so (after the
    Observation a publish creates is committed), not as soon as they are queued for delivery as amqtt does.
    Each publish is a task of its own in amqtt, so waiting for one holds up neither reading nor the others."""

    acks: dict[int, asyncio.Future[None]]  # id(message) → resolved when its PUBACK may go

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING or self.session is None or app_message.puback_packet:
            await super()._handle_qos1_message_flow(app_message)
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks[id(app_message)] = ready
        try:
            await self.session.delivered_message_queue.put(app_message)
            await ready
        finally:
            self.acks.pop(id(app_message), None)
        puback = PubackPacket.build(app_message.packet_id)
        await self._send_packet(puback)
        app_message.puback_packet = puback


class _LimitedBroker(Broker):
    """amqtt has no message size limit: publishes over `max_payload` bytes from clients are acknowledged
    and dropped, neither delivered nor retained nor handed to the platform (as Mosquitto's
    message_size_limit does for MQTT 3.1.1, which has no way to tell the client why).

    Every other client's publish to a SensorThings topic that the client may make goes to `receiver` (creating
    the Observations published to v1.1/…); a QoS 1 one is acknowledged when the receiver's future is done."""

    max_payload = 256 * 1024
    dropped = 0
    receiver: Receiver | None = None

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[BrokerProtocolHandler, Any]:
        handler, session = await super()._initialize_client_session(*args, **kwargs)
        # amqtt makes each connection's handler itself, of its own class: it becomes one that acknowledges late
        handler.__class__ = _CommitAckHandler
        handler.acks = {}  # type: ignore[attr-defined]
        return handler, session

    async def _handle_message_delivery(self, client_session: Any, handler: Any, wait_deliver: Any) -> bool:
        message = wait_deliver.result()
        ready = getattr(handler, "acks", {}).get(id(message))
        done: Pending[Any] | None = None
        try:
            data = getattr(message, "data", None) or b""
            if len(data) > self.max_payload and not is_platform(client_session):
                self.dropped += 1
                log.warning("dropped a publish of %d bytes from %s to %s: over the limit of %d KiB "
                            "(mqtt.max_payload_kb)", len(data), getattr(client_session, "client_id", ""),
                            getattr(message, "topic", "?"), self.max_payload // 1024)
                return True  # the client stays connected
            delivered = await super()._handle_message_delivery(client_session, handler, wait_deliver)
            topic = str(getattr(message, "topic", None) or "")
            # the platform's own publishes are notifications, not creates
            if delivered and self.receiver is not None and topic.startswith(STA_PREFIX) \
                    and not is_platform(client_session) \
                    and await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH):
                done = self.receiver(topic, bytes(data))
            return delivered
        finally:
            if ready is not None and not ready.done():
                if done is None:
                    ready.set_result(None)
                else:
                    loop = asyncio.get_running_loop()
                    done.add_done_callback(lambda _f: loop.call_soon_threadsafe(_release, ready))

    async def _topic_filtering(self, session: Any, topic: str, action: Action) -> bool:
        # amqtt asks its topic plugins through a task each and a gather, twice a publish and once per receiver: a
        # fifth of the broker thread's time at 3,000 publishes a second. Asked one after the other here, with the
        # same answer: allowed when every plugin says so (amqtt counts a None as a no too).
        plugins = getattr(self.plugins_manager, "_topic_plugins", None)
        if plugins is None:  # another amqtt than the one this was written for
            return await super()._topic_filtering(session, topic, action)
        if not self.plugins_manager.is_topic_filtering_enabled():
            return True
        for plugin in plugins:
            if not await plugin.topic_filtering(session=session, topic=topic, action=action):
                return False
        return True

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Any) -> None:
        # amqtt sends retained messages to a new subscription without asking the topic filter whether the
        # client may receive them (it asks for live ones): `#` would get `udp-internal/subscriptions`
        topic_filter, qos = subscription
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = [asyncio.ensure_future(handler.mqtt_publish(retained.topic, retained.data,
                                                            min(qos, retained.qos or qos), retain=True))
                 for topic, retained in list(self._retained_messages.items())
                 if self._matches(topic, topic_filter) and await self._topic_filtering(session, topic, Action.RECEIVE)]
        if tasks:
            await asyncio.wait(tasks)


def _release(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when it is there (uvicorn[standard] brings it, as for the HTTP workers), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EmbeddedBroker:
    """An amqtt broker on its own event loop thread. `gate` decides other clients' logins (None: anyone may
    connect and publish); `internal` is the (user name, secret) the platform's own clients sign in with,
    without which no client receives the `udp-internal/` topics."""

    max_payload = 256 * 1024  # bytes a client may publish (mqtt.max_payload_kb); the platform's own clients may more

    def __init__(self, host: str, port: int, ws_port: int | None,
                 receiver: Receiver | None = None,
                 gate: Callable[[str | None, str | None, str], bool | None] | None = None,
                 internal: tuple[str, str] | None = None) -> None:
        self.host, self.port, self.ws_port = host, port, ws_port
        self.receiver = receiver
        if gate is not None:
            GATEKEEPERS[id(self)] = gate
        if internal is not None:
            INTERNALS[id(self)] = internal
        self._loop = _event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mqtt-broker", daemon=True)
        self._broker: Broker | None = None

    def config(self) -> dict[str, Any]:
        """The amqtt configuration: listeners, who may connect and publish, the subscription reporter."""
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}
        if self.ws_port:
            listeners["ws"] = {"type": "ws", "bind": f"{self.host}:{self.ws_port}"}
        plugins: dict[str, Any] = {"sensorthings.mqtt.broker.SubscriptionPlugin": {"broker_id": id(self)},
                                   "sensorthings.mqtt.broker.GatePlugin": {"broker_id": id(self)}}
        return {"listeners": listeners, "plugins": plugins}

    def start(self, timeout: float = 15) -> None:
        """Start listening; raises when the ports cannot be bound."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout)

    async def _start(self) -> None:
        self._broker = _LimitedBroker(self.config(), loop=self._loop)
        self._broker.max_payload = self.max_payload
        self._broker.receiver = self.receiver
        await self._broker.start()

    def stop(self) -> None:
        """Stop the broker and its thread."""
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
