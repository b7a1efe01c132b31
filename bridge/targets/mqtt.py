"""The MQTT target (SPEC §6.3): one long-lived broker connection, QoS-acknowledged publishes.

One background task owns the connection (aiomqtt over paho-mqtt). It connects with a
last will of `offline` (retained, QoS 1) on `{prefix}/bridge/status`, publishes the
retained `online` there after every (re)connect, and reconnects with capped
exponential backoff and jitter when the broker goes away. `close()` publishes the
retained `offline` and disconnects cleanly (a clean DISCONNECT discards the will).

`send` never opens connections: it waits at most `timeout_s` for the connection, then
publishes and waits at most `timeout_s` for the acknowledgement. A delivery counts
only once the broker acknowledged it: PUBACK for QoS 1, PUBCOMP for QoS 2 (QoS 0
counts once written to the socket). How an attempt ends:

    acknowledged                     ok
    no connection within timeout_s   retryable ("broker unavailable"): the delivery
                                     stays pending in the store and flows after the
                                     reconnect
    connection lost before the ack   retryable (the broker may have the message:
                                     at-least-once, receivers de-duplicate by `id`)
    no ack within timeout_s          retryable
    topic/payload refused by paho    permanent (it would be refused every time)
    topic the broker would refuse    permanent, never sent (a control character in
                                     the template: the broker would drop the client)

Nothing here logs or returns the password: broker errors are scrubbed of it, and the
URL is only ever shown as host:port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import random
import secrets
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.aio import first_of, wait_until
from bridge.clock import Clock, SystemClock
from bridge.mqtt_topics import (
    TYPE_ONLY_PLACEHOLDERS,
    payload_bytes,
    placeholders,
    render_topic,
    replica_slug,
    replica_status_topic,
    status_topic,
    topic_problem,
    topic_values,
    type_values,
)
from bridge.settings import MqttTarget
from bridge.store.base import Delivery
from bridge.targets.base import SendResult

log = structlog.get_logger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# The broker declares us dead after 1.5 x keepalive without traffic (the last will
# then fires). A killed process is noticed at once (its socket closes); this only
# bounds how long a silent network partition goes unnoticed.
KEEPALIVE_S = 30
RECONNECT_BASE_S = 0.5
RECONNECT_MAX_S = 30.0
STABLE_CONNECTION_S = 10.0  # a connection that lasted this long resets the backoff
ERROR_CHARS = 200


def ignore_stale_socket_registrations(loop: asyncio.AbstractEventLoop) -> None:
    """Drop the loop's "Exception in callback add_writer(…) Bad file descriptor" errors.

    aiomqtt (2.5) registers paho's socket with `loop.call_soon_threadsafe(loop.add_writer,
    fd, …)`. When the broker has dropped the connection meanwhile — e.g. after the
    process was stopped (SIGSTOP) longer than 1.5 x keepalive — the socket is closed by
    the time the callback runs, and asyncio logs a traceback for a registration that no
    longer matters: the connection loss itself is handled (`mqtt disconnected`, then a
    reconnect). Only that case (EBADF from add_reader/add_writer) is filtered; every
    other error goes to the handler that was there before (issue #9).
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "_ignores_stale_sockets", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        stale = isinstance(exc, OSError) and exc.errno == errno.EBADF
        if stale and (".add_writer(" in message or ".add_reader(" in message):
            log.debug("ignored a socket registration after the connection closed")
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._ignores_stale_sockets = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where and as whom to connect, resolved from the URL and the target settings."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @property
    def address(self) -> str:
        """host:port, for logs (never the credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def broker_endpoint(cfg: MqttTarget) -> BrokerEndpoint:
    """The endpoint of `cfg.url`; `username`/`password` settings win over the URL's."""
    parts = urlsplit(cfg.url)
    assert parts.hostname is not None  # the settings validator guarantees a host
    username = cfg.username
    password = cfg.password.get_secret_value() if cfg.password is not None else None
    if username is None and parts.username:
        username = unquote(parts.username)
        if password is None and parts.password is not None:
            password = unquote(parts.password)
    return BrokerEndpoint(
        host=parts.hostname,
        port=parts.port or DEFAULT_PORTS[parts.scheme],
        tls=parts.scheme == "mqtts",
        username=username,
        password=password,
    )


def reconnect_delay(
    failures: int,
    rng: random.Random,
    base_s: float = RECONNECT_BASE_S,
    max_s: float = RECONNECT_MAX_S,
) -> float:
    """Seconds before reconnect attempt `failures + 1`: capped exponential, jittered.

    Jitter in [50 %, 100 %] of the ceiling: bridges restarted together do not hit a
    recovering broker in lockstep, and a floor keeps a dead broker from being hammered.
    """
    ceiling = min(max_s, base_s * 2.0 ** min(failures, 32))
    return ceiling * rng.uniform(0.5, 1.0)


class _Connection:
    """One established connection and a task that ends when it is lost."""

    def __init__(
        self, client: aiomqtt.Client, on_message: Callable[[aiomqtt.Message], None] | None = None
    ) -> None:
        self.client = client
        self.lost: asyncio.Task[None] = asyncio.create_task(_until_disconnected(client, on_message))


async def _until_disconnected(
    client: aiomqtt.Client, on_message: Callable[[aiomqtt.Message], None] | None
) -> None:
    # aiomqtt's message iterator ends with MqttError when the connection goes; only the
    # shared status topic is ever subscribed (several replicas), so this mostly waits
    # (and retrieves the disconnect exception, which asyncio would otherwise report as
    # never retrieved).
    with contextlib.suppress(aiomqtt.MqttError):
        async for message in client.messages:
            if on_message is not None:
                on_message(message)


class MqttSender:
    """Publishes notifications to one MQTT broker over one long-lived connection."""

    def __init__(
        self,
        cfg: MqttTarget,
        *,
        clock: Clock | None = None,
        keepalive_s: int = KEEPALIVE_S,
        reconnect_base_s: float = RECONNECT_BASE_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        rng: random.Random | None = None,
        replica: str | None = None,
    ) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng or random.Random()
        self._keepalive_s = keepalive_s
        self._reconnect_base_s = reconnect_base_s
        self._reconnect_max_s = reconnect_max_s
        self._timeout_s = cfg.timeout_s
        self._endpoint = broker_endpoint(cfg)
        self._protocol = (
            aiomqtt.ProtocolVersion.V5 if cfg.protocol == "5" else aiomqtt.ProtocolVersion.V311
        )
        # One id for the life of the sender: a reconnect then takes the old session
        # over at once, so a half-dead earlier connection cannot fire its `offline`
        # will after our fresh `online`.
        self._client_id = cfg.client_id or f"fleet-bridge-{cfg.name}-{secrets.token_hex(4)}"
        if cfg.client_id and replica is not None:
            # A configured id is shared by every replica (one config, e.g. the Helm
            # chart): used as it is, each replica's connect would knock the others'
            # off the broker, and their wills would fire. Each gets its own.
            self._client_id = f"{cfg.client_id}-{replica_slug(replica)}"
        self._status_topic = status_topic(cfg.topic_prefix)
        # Several replicas (SPEC §6.3): each keeps its own status topic with its own
        # will (a second, tiny connection), and re-announces `online` on the shared
        # topic whenever another replica's will (or clean stop) said `offline` there.
        self._replica = replica
        self._replica_topic = (
            replica_status_topic(cfg.topic_prefix, replica) if replica is not None else None
        )
        self._presence: asyncio.Task[None] | None = None
        self._presence_up: bool | None = None  # None until the first attempt ends
        self._presence_up_since: float | None = None
        self._reannounce: set[asyncio.Task[Any]] = set()
        self._template = cfg.topic
        self._type_only = placeholders(cfg.topic) <= TYPE_ONLY_PLACEHOLDERS
        self._properties = self._publish_properties()
        self._conn: _Connection | None = None
        self._changed = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected: bool | None = None  # None until the first attempt ends
        self._up_since: float | None = None

    @property
    def connected(self) -> bool:
        """Whether the connection is up (for status reporting)."""
        return self._usable()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task; it connects in the background (a down broker
        must not stop the bridge from starting: deliveries wait in the store)."""
        ignore_stale_socket_registrations(asyncio.get_running_loop())
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.name}")
        if self._replica_topic is not None and self._presence is None:
            self._presence = asyncio.create_task(
                self._keep_presence(), name=f"mqtt:{self.name}:replica"
            )

    async def close(self) -> None:
        """Publish the retained `offline`, disconnect cleanly, stop the task."""
        self._stopping.set()
        presence, self._presence = self._presence, None
        if presence is not None:
            done, _ = await asyncio.wait({presence}, timeout=self._timeout_s + 1)
            if not done:
                presence.cancel()
            await asyncio.gather(presence, return_exceptions=True)
        task, self._task = self._task, None
        if task is None:
            return
        async with self._changed:
            self._changed.notify_all()
        # Bounded: publishing `offline` and the DISCONNECT each wait at most timeout_s.
        done, _ = await asyncio.wait({task}, timeout=2 * self._timeout_s + 1)
        if not done:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # -- sending -----------------------------------------------------------------

    async def send(self, delivery: Delivery, envelope: Mapping[str, Any], body: str) -> SendResult:
        """Publish one notification and wait for the broker's acknowledgement."""
        topic = self.topic_for(delivery, envelope)
        problem = topic_problem(topic)
        if problem is not None:
            # Sent anyway, the broker would drop the connection (and again after each
            # reconnect): this delivery can never succeed, so it fails for good.
            return SendResult(ok=False, error=f"topic refused: {problem}", retryable=False)
        conn = await self._wait_connected()
        if conn is None:
            return SendResult(ok=False, error="broker unavailable")
        error = await self._publish(
            conn,
            topic,
            payload_bytes(body),
            qos=self._cfg.qos,
            retain=self._cfg.retain,
            properties=self._properties,
        )
        if error is None:
            return SendResult.success()
        return SendResult(ok=False, error=error.message, retryable=error.retryable)

    def topic_for(self, delivery: Delivery, envelope: Mapping[str, Any]) -> str:
        """The topic of one delivery, from the template."""
        if self._type_only:
            values = type_values(self._cfg.topic_prefix, delivery.type)
        else:
            values = topic_values(self._cfg.topic_prefix, envelope)
        return render_topic(self._template, values)

    def _usable(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.lost.done()

    async def _wait_connected(self) -> _Connection | None:
        if not self._usable():
            # Not `asyncio.wait_for` (see bridge/aio.py): a worker cancelled at stop just
            # as the connection came up would go on to publish instead of ending.
            up = await wait_until(
                self._changed, lambda: self._usable() or self._stopping.is_set(), self._timeout_s
            )
            if not up:
                return None
        conn = self._conn
        return conn if conn is not None and not conn.lost.done() else None

    async def _publish(
        self,
        conn: _Connection,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool,
        properties: Properties | None = None,
    ) -> _PublishError | None:
        """Publish; wait at most timeout_s for the ack, racing the loss of the connection."""
        publish = asyncio.create_task(
            conn.client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=math.inf
            )
        )
        try:
            await asyncio.wait(
                {publish, conn.lost}, timeout=self._timeout_s, return_when="FIRST_COMPLETED"
            )
        finally:
            publish.cancel()  # no-op when it finished
            await asyncio.gather(publish, return_exceptions=True)
        if not publish.cancelled():
            err = publish.exception()
            if err is None:
                return None
            if isinstance(err, aiomqtt.MqttError):
                return _PublishError(f"publish failed: {self._describe(err)}")
            if isinstance(err, ValueError):
                # paho refuses the topic or payload (e.g. too long): it always will.
                return _PublishError(f"publish refused: {self._scrub(str(err))}", retryable=False)
            raise err
        if conn.lost.done():
            return _PublishError("connection lost before the broker acknowledged")
        return _PublishError(f"no acknowledgement within {self._timeout_s:g}s")

    def _publish_properties(self) -> Properties | None:
        if self._protocol is not aiomqtt.ProtocolVersion.V5:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.PayloadFormatIndicator = 1  # UTF-8 text
        props.ContentType = "application/json"
        return props

    # -- the connection task -------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if await self._session():
                    return  # closed cleanly
                if self._up_since is not None and (
                    time.monotonic() - self._up_since >= STABLE_CONNECTION_S
                ):
                    # A connection that held starts the backoff afresh; one dropped at
                    # once (e.g. another client taking our id) keeps backing off.
                    failures = 0
                self._set_disconnected("connection lost")
            except (aiomqtt.MqttError, OSError) as err:
                self._set_disconnected(self._describe(err))
            except Exception as err:
                # The one owner of the connection must outlive a bug in a library
                # callback; otherwise the target would stay silent until a restart.
                log.exception("mqtt connection task failed; reconnecting", target=self.name)
                self._set_disconnected(f"internal error: {type(err).__name__}")
            await self._sleep(
                reconnect_delay(failures, self._rng, self._reconnect_base_s, self._reconnect_max_s)
            )
            failures += 1

    async def _session(self) -> bool:
        """One connection from connect to loss (False) or clean close (True)."""
        client = await self._client(self._client_id, self._status_topic)
        # aiomqtt warns above 10 pending publishes; the dispatcher already bounds them
        # with `max_in_flight` (plus the status messages).
        client.pending_calls_threshold = self._cfg.max_in_flight + 10
        conn: _Connection | None = None
        try:
            async with client:
                conn = _Connection(client, self._on_status if self._replica is not None else None)
                if self._replica is not None:
                    await client.subscribe(self._status_topic, qos=1)
                return await self._serve(conn)
        finally:
            self._conn = None
            if conn is not None:
                # Leaving `async with` has disconnected; whoever creates a task awaits it.
                conn.lost.cancel()
                await asyncio.gather(conn.lost, return_exceptions=True)

    async def _serve(self, conn: _Connection) -> bool:
        """Announce `online`, then hold the connection until it is lost or we close."""
        error = await self._publish(conn, self._status_topic, ONLINE, qos=1, retain=True)
        if error is not None:
            raise aiomqtt.MqttError(f"announcing online: {error.message}")
        await self._set_connected(conn)
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({conn.lost, stop}, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)
        if conn.lost.done():
            return False
        self._conn = None  # no new sends on a closing connection
        error = await self._publish(conn, self._status_topic, OFFLINE, qos=1, retain=True)
        if error is not None:
            log.warning(
                "mqtt offline status not acknowledged", target=self.name, error=error.message
            )
        log.info("mqtt closed", target=self.name, broker=self._endpoint.address)
        return True

    def _on_status(self, message: aiomqtt.Message) -> None:
        """Another replica's will (or clean stop) said `offline`: we are still here."""
        if message.payload != OFFLINE or self._stopping.is_set():
            return
        conn = self._conn
        if conn is None:
            return
        task = asyncio.create_task(
            self._publish(conn, self._status_topic, ONLINE, qos=1, retain=True)
        )
        self._reannounce.add(task)
        task.add_done_callback(self._reannounce.discard)

    async def _keep_presence(self) -> None:
        """`{prefix}/bridge/replicas/{replica}/status`: online while we run, its own will.

        Logged once per change of state, like the main connection: the two connections
        can fail apart, and a silent failure here would leave the replica shown offline.
        """
        failures = 0
        while not self._stopping.is_set():
            try:
                if await self._presence_session():
                    return  # closed cleanly
                if self._presence_up_since is not None and (
                    time.monotonic() - self._presence_up_since >= STABLE_CONNECTION_S
                ):
                    failures = 0
                self._set_presence_down("connection lost")
            except (aiomqtt.MqttError, OSError, ValueError) as err:
                self._set_presence_down(self._describe(err))
            except Exception as err:
                # As in `_run`: a bug in a library callback must not end the replica's
                # status for the life of the process.
                log.exception("mqtt replica status task failed; reconnecting", target=self.name)
                self._set_presence_down(f"internal error: {type(err).__name__}")
            await self._sleep(
                reconnect_delay(failures, self._rng, self._reconnect_base_s, self._reconnect_max_s)
            )
            failures += 1

    def _set_presence_down(self, error: str) -> None:
        self._presence_up_since = None
        if self._presence_up is not False:
            self._presence_up = False
            log.warning(
                "mqtt replica status disconnected",
                target=self.name,
                replica=self._replica,
                broker=self._endpoint.address,
                error=error,
            )

    async def _presence_session(self) -> bool:
        """One presence connection from connect to loss (False) or clean close (True)."""
        assert self._replica_topic is not None
        client = await self._client(f"{self._client_id}-replica", self._replica_topic)
        async with client:
            await client.publish(self._replica_topic, ONLINE, qos=1, retain=True)
            self._presence_up_since = time.monotonic()
            if self._presence_up is not True:
                self._presence_up = True
                log.info("mqtt replica status online", target=self.name, replica=self._replica)
            lost = asyncio.create_task(_until_disconnected(client, None))
            stop = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait({lost, stop}, return_when="FIRST_COMPLETED")
            finally:
                for t in (lost, stop):
                    t.cancel()
                await asyncio.gather(lost, stop, return_exceptions=True)
            if not self._stopping.is_set():
                return False
            await client.publish(self._replica_topic, OFFLINE, qos=1, retain=True)
            return True

    async def _client(self, identifier: str, will_topic: str) -> aiomqtt.Client:
        """A client for one connection, with `offline` (retained) as its will on `will_topic`."""
        tls_context = None
        if self._endpoint.tls:
            try:
                tls_context = await asyncio.to_thread(self._tls_context)
            except (OSError, ValueError) as err:  # ssl.SSLError is an OSError
                raise aiomqtt.MqttError(f"TLS setup failed: {err}") from err
        return aiomqtt.Client(
            self._endpoint.host,
            self._endpoint.port,
            username=self._endpoint.username,
            password=self._endpoint.password,
            identifier=identifier,
            protocol=self._protocol,
            will=aiomqtt.Will(will_topic, OFFLINE, qos=1, retain=True),
            timeout=self._timeout_s,
            keepalive=self._keepalive_s,
            tls_context=tls_context,
        )

    def _tls_context(self) -> ssl.SSLContext:
        """Loaded per connection (in a thread), so rotated certificate files are used."""
        cfg = self._cfg
        ctx = ssl.create_default_context(
            cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file is not None else None
        )
        if cfg.tls_cert_file is not None:
            ctx.load_cert_chain(
                str(cfg.tls_cert_file),
                str(cfg.tls_key_file) if cfg.tls_key_file is not None else None,
            )
        if cfg.tls_insecure:
            # paho's meaning: the certificate chain is still verified, the host name not.
            ctx.check_hostname = False
        return ctx

    async def _set_connected(self, conn: _Connection) -> None:
        self._up_since = time.monotonic()
        async with self._changed:
            self._conn = conn
            self._changed.notify_all()
        if self._connected is not True:
            self._connected = True
            log.info(
                "mqtt connected",
                target=self.name,
                broker=self._endpoint.address,
                protocol=self._cfg.protocol,
            )

    def _set_disconnected(self, error: str) -> None:
        self._conn = None
        self._up_since = None
        if self._connected is not False:
            self._connected = False
            log.warning(
                "mqtt disconnected", target=self.name, broker=self._endpoint.address, error=error
            )

    async def _sleep(self, seconds: float) -> None:
        """Back off for `seconds` of clock time, or less if the sender is closed."""
        await first_of(self._clock.sleep(seconds), self._stopping.wait())

    # -- error text ----------------------------------------------------------------

    def _describe(self, err: BaseException) -> str:
        if isinstance(err, MqttConnectError):
            text = f"connection refused by the broker: {err}"
        elif isinstance(err, ssl.SSLError):
            text = f"TLS error: {err.reason or type(err).__name__}"
        elif isinstance(err, OSError) and err.strerror:
            text = err.strerror
        else:
            text = str(err) or type(err).__name__
        return self._scrub(text)[:ERROR_CHARS]

    def _scrub(self, text: str) -> str:
        password = self._endpoint.password
        if password:
            text = text.replace(password, "***")
        return text


@dataclass(frozen=True)
class _PublishError:
    message: str
    retryable: bool = True
