"""The MQTT target (SPEC §6.3) against real Mosquitto brokers.

Each test starts private brokers (tests/mosquitto.py) on free ports, so it can stop
and restart them; an aiomqtt subscriber records what arrives. Delivery semantics are
checked through the real dispatcher and SQLite store; the last will through the real
bridge process, SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiomqtt
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestServer
from conftest import wait_for
from hypothesis import given
from hypothesis import strategies as st
from mosquitto import HOST, Mosquitto, Subscriber, TlsListener, wait_retained, write_password_file
from structlog.testing import capture_logs

from bridge.clock import SystemClock
from bridge.dispatch import Dispatcher, dispatch_options
from bridge.metrics import Metrics
from bridge.mqtt_topics import (
    render_topic,
    replica_status_topic,
    status_topic,
    topic_problem,
    topic_values,
)
from bridge.notifications import Notification, build_notification
from bridge.settings import MqttTarget, StoreSettings
from bridge.simulator import Simulator, SimulatorConfig
from bridge.store import open_store
from bridge.store.base import Delivery, NewNotification, Store
from bridge.targets.base import LazyEnvelope
from bridge.targets.mqtt import MqttSender, broker_endpoint, ignore_stale_socket_registrations

ServerFactory = Callable[..., Awaitable[TestServer]]
STATUS = "fleet/bridge/status"
V311 = aiomqtt.ProtocolVersion.V311
V5 = aiomqtt.ProtocolVersion.V5
PASSWORD = "pw-S3cret:@/x"  # characters that must be percent-encoded in a URL


# -- builders ---------------------------------------------------------------------------


def target_cfg(url: str, **extra: Any) -> MqttTarget:
    raw: dict[str, Any] = {
        "name": "mq",
        "type": "mqtt",
        "url": url,
        "timeout_s": 2,
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.5, "max_attempts": 1000},
        **extra,
    }
    return MqttTarget.model_validate(raw)


def event(
    ticket: str,
    *,
    cid: str | None = "dev-1",
    code: int = 1,
    severity: str = "severe",
    type_: str = "event.created",
) -> Notification:
    data = {
        "ticket": ticket,
        "revision": 1,
        "event_type": {"code": code, "name": "Impact", "category": "sensor"},
        "severity": severity,
        "device": {"cid": cid, "serial_number": None},
    }
    return build_notification(type_, data, base_url="https://fleet.example.com", now=time.time())


def clip(task_id: int) -> Notification:
    data = {"task_id": task_id, "serial_number": "SN-1", "state": "success", "ticket": None}
    return build_notification(
        "clip.completed", data, base_url="https://fleet.example.com", now=time.time()
    )


def delivery_of(n: Notification) -> Delivery:
    return Delivery(1, n.id, n.type, "mq", n.body, 0, time.time())


def ids_received(sub: Subscriber) -> set[str]:
    out = set()
    for m in sub.messages:
        if m.topic != STATUS:
            out.add(json.loads(m.payload)["id"])
    return out


def by_id(sub: Subscriber, notification_id: str) -> list[Any]:
    return [
        m
        for m in sub.messages
        if m.topic != STATUS and json.loads(m.payload)["id"] == notification_id
    ]


def events_named(logs: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


@dataclass
class Rig:
    """A real dispatcher and SQLite store around one MqttSender."""

    store: Store
    dispatcher: Dispatcher
    sender: MqttSender

    async def enqueue(self, notifications: list[Notification]) -> None:
        async def fn(tx: Any) -> None:
            await tx.add_notifications([NewNotification(n, ["mq"]) for n in notifications])

        await self.store.ingest(fn)

    async def counts(self) -> dict[str, int]:
        """Non-zero queue counts by state (pending, in_flight, dead)."""
        return {k: v for k, v in (await self.store.queue_counts()).get("mq", {}).items() if v}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cfg: MqttTarget, **sender_kwargs: Any) -> AsyncIterator[Rig]:
    clock = SystemClock()
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/bridge.db"), clock)
    await store.open()
    sender = MqttSender(cfg, clock=clock, **sender_kwargs)
    dispatcher = Dispatcher(dispatch_options(cfg), sender, store, clock, Metrics())
    await dispatcher.start()
    try:
        yield Rig(store, dispatcher, sender)
    finally:
        await dispatcher.stop(5)
        await store.close()  # type: ignore[func-returns-value]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Mosquitto]:
    async with Mosquitto(tmp_path / "broker") as b:
        yield b


# -- topics (pure) ------------------------------------------------------------------------

ALL = "{prefix}/{type}/{type_path}/{device_cid}/{event_type}/{severity}/{ticket}"


def test_every_placeholder_renders() -> None:
    env = event("tk-1", cid="cid-1", code=22, severity="minor").envelope()
    assert render_topic(ALL, topic_values("fleet", env)) == (
        "fleet/event.created/event/created/cid-1/22/minor/tk-1"
    )
    # Missing values become "-"; clip data names its device as data.device_cid.
    assert render_topic(ALL, topic_values("acme/fleet", clip(5).envelope())) == (
        "acme/fleet/clip.completed/clip/completed/-/-/-/-"
    )
    env = {"type": "clip.updated", "data": {"device_cid": "cid-9", "ticket": ""}}
    assert render_topic(ALL, topic_values("p", env)) == "p/clip.updated/clip/updated/cid-9/-/-/-"
    assert status_topic("fleet") == STATUS


def test_hostile_values_cannot_add_levels_or_wildcards() -> None:
    env = event("../#", cid="a/b+c#d\x00e", severity="+").envelope()
    topic = render_topic(ALL, topic_values("fl#e+et", env))
    assert topic == "fl_e_et/event.created/event/created/a_b_c_d_e/1/_/..__"


@given(
    cid=st.text(),
    severity=st.text(),
    ticket=st.text(),
    code=st.one_of(st.none(), st.integers(), st.text()),
)
def test_any_value_stays_in_its_level(cid: str, severity: str, ticket: str, code: Any) -> None:
    env = {
        "type": "event.created",
        "data": {
            "device": {"cid": cid},
            "severity": severity,
            "ticket": ticket,
            "event_type": {"code": code},
        },
    }
    topic = render_topic(
        "{prefix}/{device_cid}/{event_type}/{severity}/{ticket}", topic_values("p", env)
    )
    levels = topic.split("/")
    assert len(levels) == 5
    assert all(levels)
    assert not any(c in topic for c in "+#\x00")


async def test_type_only_template_does_not_parse_the_body() -> None:
    sender = MqttSender(target_cfg("mqtt://127.0.0.1", topic="{prefix}/{type_path}"))
    d = Delivery(1, "ntf_x", "event.updated", "mq", "not json", 0, 0.0)
    assert sender.topic_for(d, LazyEnvelope("not json")) == "fleet/event/updated"


def test_endpoint_from_url_and_settings() -> None:
    url = f"mqtts://bridge:{quote(PASSWORD, safe='')}@broker.example"
    ep = broker_endpoint(target_cfg(url))
    assert (ep.host, ep.port, ep.tls, ep.username, ep.password) == (
        "broker.example", 8883, True, "bridge", PASSWORD,
    )  # fmt: skip
    ep = broker_endpoint(target_cfg("mqtt://u:p@[::1]", username="other", password="pw2"))
    assert (ep.port, ep.tls, ep.username, ep.password, ep.address) == (
        1883, False, "other", "pw2", "[::1]:1883",
    )  # fmt: skip


# -- delivery through the dispatcher -------------------------------------------------------


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_every_notification_arrives_on_its_topic_with_qos1(
    tmp_path: Path, broker: Mosquitto, protocol: str
) -> None:
    sub_protocol = V5 if protocol == "5" else V311
    cfg = target_cfg(
        f"mqtt://127.0.0.1:{broker.port}",
        protocol=protocol,
        topic="{prefix}/{type_path}/{device_cid}/{severity}",
    )
    notes = [event(f"t-{i}", cid=f"dev-{i % 3}", severity="moderate") for i in range(20)]
    hostile = event("t-evil", cid="evil/+/#")
    notes += [hostile, clip(7)]
    expected = {n.id: f"fleet/event/created/dev-{i % 3}/moderate" for i, n in enumerate(notes)}
    expected[hostile.id] = "fleet/event/created/evil____/severe"
    expected[notes[-1].id] = "fleet/clip/completed/-/-"

    async with Subscriber(broker.port, ("fleet/#",), protocol=sub_protocol) as sub:
        async with running(tmp_path, cfg) as rig:
            await rig.enqueue(notes)
            await wait_for(lambda: ids_received(sub) >= set(expected), message="every id")
            await rig.dispatcher.wait_idle()
            assert await rig.counts() == {}  # nothing pending, in flight or dead
            for n in notes:
                (m,) = by_id(sub, n.id)  # exactly once
                assert m.topic == expected[n.id]
                assert m.qos == 1
                assert m.payload == n.body.encode("utf-8")
                if protocol == "5":
                    assert m.content_type == "application/json"
            # The hostile device stayed inside one level of the topic tree.
            (m,) = by_id(sub, hostile.id)
            assert len(m.topic.split("/")) == 5
            # Availability: `online`, retained, while running.
            await wait_retained(broker.port, STATUS, b"online", protocol=sub_protocol)
        # A clean close replaces it with `offline`.
        await wait_for(lambda: sub.last(STATUS) == b"offline", message="offline on close")
        await wait_retained(broker.port, STATUS, b"offline", protocol=sub_protocol)


async def test_qos2_and_retain_are_applied(broker: Mosquitto) -> None:
    cfg = target_cfg(f"mqtt://127.0.0.1:{broker.port}", qos=2, retain=True, topic="{prefix}/last")
    n = event("t-1")
    sender = MqttSender(cfg)
    await sender.start()
    try:
        async with Subscriber(broker.port, ("fleet/last",)) as sub:
            result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
            assert result.ok, result
            await wait_for(lambda: bool(sub.on("fleet/last")), message="the notification")
            assert sub.on("fleet/last")[0].qos == 2  # PUBCOMP was awaited
        await wait_retained(broker.port, "fleet/last", n.body.encode())
    finally:
        await sender.close()


# -- broker outages ----------------------------------------------------------------------------


async def test_unreachable_broker_is_retryable_and_logged_once(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")  # reserved port, not started yet
    cfg = target_cfg(
        f"mqtt://bridge:{quote(PASSWORD, safe='')}@127.0.0.1:{broker.port}", timeout_s=0.5
    )
    n = event("t-1")
    refusals = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A broker that answers every CONNECT with CONNACK "not authorised".
        nonlocal refusals
        await reader.read(1024)
        writer.write(bytes([0x20, 0x02, 0x00, 0x05]))
        await writer.drain()
        refusals += 1
        writer.close()

    with capture_logs() as logs:
        sender = MqttSender(cfg, reconnect_base_s=0.02, reconnect_max_s=0.2)
        await sender.start()
        try:
            # Nothing listens: the send waits timeout_s, then asks to be retried.
            started = time.monotonic()
            result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
            assert (result.ok, result.retryable, result.error) == (
                False, True, "broker unavailable",
            )  # fmt: skip
            assert time.monotonic() - started < 2
            # A broker that refuses us, again and again, while we back off.
            server = await asyncio.start_server(refuse, HOST, broker.port)
            try:
                await wait_for(lambda: refusals >= 3, message="three refused reconnects")
            finally:
                server.close()
                await server.wait_closed()
            await broker.start()
            async with Subscriber(broker.port, ("fleet/#",)) as sub:
                await wait_for(lambda: sender.connected, message="reconnected")
                result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
                assert result.ok, result
                await wait_for(lambda: n.id in ids_received(sub), message="delivery")
        finally:
            await sender.close()
            await broker.stop()
    # One line per state change, however many attempts failed in between.
    down = events_named(logs, "mqtt disconnected")
    assert len(down) == 1
    assert len(events_named(logs, "mqtt connected")) == 1
    assert "127.0.0.1" in down[0]["broker"]
    assert PASSWORD not in repr(logs)
    assert quote(PASSWORD, safe="") not in repr(logs)


async def test_broker_restart_loses_nothing(tmp_path: Path) -> None:
    # Broker persistence only keeps the *subscriber's* session across the restart,
    # so what the bridge publishes while the subscriber reconnects is queued for it.
    async with Mosquitto(tmp_path / "broker", persistence=True) as broker:
        sub = await Subscriber(broker.port, ("fleet/#",), persistent_id="sub-restart").start()
        cfg = target_cfg(f"mqtt://127.0.0.1:{broker.port}", timeout_s=1)
        first = [event(f"a-{i}") for i in range(20)]
        second = [event(f"b-{i}") for i in range(20)]
        try:
            with capture_logs() as logs:
                async with running(tmp_path, cfg) as rig:
                    await rig.enqueue(first)
                    await wait_for(lambda: ids_received(sub) >= {n.id for n in first})
                    await broker.stop()
                    await rig.enqueue(second)
                    # The deliveries fail and wait in the store.
                    await wait_for(lambda: rig.dispatcher.health.failing, message="failing")
                    assert rig.dispatcher.health.last_error == "broker unavailable"

                    async def waiting_in_store() -> bool:
                        counts = await rig.counts()
                        assert "dead" not in counts
                        return counts.get("pending", 0) > 0

                    await wait_for(waiting_in_store, message="deliveries pending in the store")
                    await broker.start()
                    everything = {n.id for n in first + second}
                    await wait_for(lambda: ids_received(sub) >= everything, timeout=20)
                    await rig.dispatcher.wait_idle()
                    assert await rig.counts() == {}

                    # `online` was announced again after the reconnect (the broker fires our
                    # will when it shuts down, so an `offline` came in between).
                    def live_status() -> list[bytes]:
                        return [m.payload for m in sub.on(STATUS) if not m.retain]

                    await wait_for(
                        lambda: live_status().count(b"online") >= 2,
                        message="online after the reconnect",
                    )
                    assert live_status()[-1] == b"online"
                    await wait_retained(broker.port, STATUS, b"online")
        finally:
            await sub.stop()
    assert len(events_named(logs, "mqtt disconnected")) == 1
    assert len(events_named(logs, "mqtt connected")) == 2


class SilentBroker:
    """Just enough MQTT 3.1.1 to accept a connection and acknowledge the first
    PUBLISH (the `online` status); every later PUBLISH is read and never acknowledged."""

    def __init__(self) -> None:
        self.publishes: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                header = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = header >> 4
                if kind == 1:  # CONNECT -> CONNACK accepted
                    writer.write(bytes([0x20, 0x02, 0x00, 0x00]))
                elif kind == 3:  # PUBLISH
                    topic_len = int.from_bytes(body[:2], "big")
                    self.publishes.append(body[2 : 2 + topic_len].decode())
                    packet_id = body[2 + topic_len : 4 + topic_len]
                    if len(self.publishes) == 1:
                        writer.write(bytes([0x40, 0x02]) + packet_id)  # PUBACK
                elif kind == 12:  # PINGREQ -> PINGRESP
                    writer.write(bytes([0xD0, 0x00]))
                await writer.drain()

    def drop_connections(self) -> None:
        for w in self.writers:
            w.close()


async def test_a_delivery_counts_only_once_acknowledged() -> None:
    fake = SilentBroker()
    server = await asyncio.start_server(fake.handle, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    cfg = target_cfg(f"mqtt://127.0.0.1:{port}", timeout_s=0.5)
    sender = MqttSender(cfg, reconnect_base_s=10)  # no reconnect during the test
    await sender.start()
    try:
        await wait_for(lambda: sender.connected, message="connected to the silent broker")
        assert fake.publishes == [STATUS]
        n = event("t-1")
        # Written to the socket, never acknowledged: not delivered, try again later.
        result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
        assert (result.ok, result.retryable) == (False, True)
        assert result.error == "no acknowledgement within 0.5s"
        assert fake.publishes[-1] == "fleet/event/created/dev-1"
        # The connection drops while a publish waits for its ack: retryable at once.
        sending = asyncio.create_task(sender.send(delivery_of(n), LazyEnvelope(n.body), n.body))
        await wait_for(lambda: len(fake.publishes) == 3, message="the second publish")
        fake.drop_connections()
        result = await sending
        assert (result.ok, result.retryable) == (False, True)
        assert result.error == "connection lost before the broker acknowledged"
    finally:
        await sender.close()
        server.close()
        await server.wait_closed()


# -- TLS and authentication ----------------------------------------------------------------------


async def test_tls_with_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("fleet-bridge")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client.private_key_pem.write_to_path(str(files["ckey"]))
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    tls = TlsListener(files["ca"], files["cert"], files["key"], require_certificate=True)

    async with Mosquitto(tmp_path / "broker", tls=tls) as broker:
        url = f"mqtts://localhost:{broker.tls_port}"
        good = target_cfg(
            url, tls_ca_file=files["ca"], tls_cert_file=files["ccert"], tls_key_file=files["ckey"]
        )
        n = event("t-tls")
        async with Subscriber(broker.port, ("fleet/#",)) as sub:
            sender = MqttSender(good)
            await sender.start()
            try:
                result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
                assert result.ok, result
                await wait_for(lambda: n.id in ids_received(sub), message="delivery over TLS")
            finally:
                await sender.close()

        # A server certificate from an unknown CA, or no client certificate: no connection.
        errors = []
        for bad in (
            target_cfg(
                url,
                timeout_s=0.5,
                tls_ca_file=other_ca,
                tls_cert_file=files["ccert"],
                tls_key_file=files["ckey"],
            ),
            target_cfg(url, timeout_s=0.5, tls_ca_file=files["ca"]),
        ):
            with capture_logs() as logs:
                sender = MqttSender(bad)
                await sender.start()
                try:
                    result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
                finally:
                    await sender.close()
            assert (result.ok, result.retryable, result.error) == (
                False, True, "broker unavailable",
            )  # fmt: skip
            (down,) = events_named(logs, "mqtt disconnected")
            errors.append(down["error"])
    # The log says why, for the operator.
    assert "TLS" in errors[0] or "certificate" in errors[0], errors
    assert all(errors), errors


async def test_username_and_password(tmp_path: Path) -> None:
    passwords = write_password_file(tmp_path / "passwd", {"bridge": PASSWORD, "sub": "sub-pw"})
    async with Mosquitto(tmp_path / "broker", password_file=passwords) as broker:
        base = f"127.0.0.1:{broker.port}"
        configs = {
            "from the URL": target_cfg(f"mqtt://bridge:{quote(PASSWORD, safe='')}@{base}"),
            "from settings": target_cfg(f"mqtt://{base}", username="bridge", password=PASSWORD),
        }
        async with Subscriber(broker.port, ("fleet/#",), username="sub", password="sub-pw") as sub:
            for how, cfg in configs.items():
                n = event(f"t-{how}")
                sender = MqttSender(cfg)
                await sender.start()
                try:
                    result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
                    assert result.ok, (how, result)
                    await wait_for(lambda n=n: n.id in ids_received(sub), message=how)
                finally:
                    await sender.close()

        wrong = target_cfg(f"mqtt://bridge:wrong-password@{base}", timeout_s=0.5)
        with capture_logs() as logs:
            sender = MqttSender(wrong)
            await sender.start()
            try:
                n = event("t-wrong")
                result = await sender.send(delivery_of(n), LazyEnvelope(n.body), n.body)
            finally:
                await sender.close()
    assert (result.ok, result.retryable, result.error) == (False, True, "broker unavailable")
    (down,) = events_named(logs, "mqtt disconnected")
    assert "refused" in down["error"]
    assert "wrong-password" not in repr(logs)


# -- the bridge process ---------------------------------------------------------------------------


def bridge_config(path: Path, sim_url: str, broker_port: int, db: Path) -> Path:
    cfg = {
        "upstream": {
            "base_url": sim_url,
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "max_requests_per_s": 1000,
        },
        "poll": {"events": {"interval_s": 1, "start_from": "25h", "max_window_s": 3600}},
        "store": {"url": f"sqlite:///{db}"},
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
        "logging": {"format": "json", "level": "info"},
        "targets": [
            {
                "name": "mq",
                "type": "mqtt",
                "url": f"mqtt://127.0.0.1:{broker_port}",
                "topic": "{prefix}/{type_path}/{ticket}",
                "timeout_s": 2,
            }
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_killed_bridge_process_leaves_offline_by_last_will(
    aiohttp_server: ServerFactory, tmp_path: Path, broker: Mosquitto
) -> None:
    sim = Simulator(SimulatorConfig(seed=5, devices=5, rate=0.0, backlog=15))
    sim_server = await aiohttp_server(sim.app())
    config = bridge_config(
        tmp_path / "config.yaml", str(sim_server.make_url("")), broker.port, tmp_path / "b.db"
    )
    tickets = {e.item["ticket"] for e in sim.events}
    assert len(tickets) == 15

    async def start_bridge(log: Path) -> asyncio.subprocess.Process:
        with log.open("wb") as err:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(config),
                stdout=asyncio.subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    def status() -> bytes | None:
        return sub.last(STATUS)

    async with Subscriber(broker.port, ("fleet/#",)) as sub:
        proc = await start_bridge(tmp_path / "run1.log")
        try:
            await wait_for(lambda: status() == b"online", timeout=15, message="online")
            topics = {f"fleet/event/created/{t}" for t in tickets}
            await wait_for(lambda: topics <= {m.topic for m in sub.messages}, timeout=15)
            await wait_retained(broker.port, STATUS, b"online")
        finally:
            proc.kill()
            await proc.wait()
        # SIGKILL: no clean DISCONNECT, so the broker publishes the last will.
        await wait_for(lambda: status() == b"offline", message="offline by last will")
        await wait_retained(broker.port, STATUS, b"offline")

        # A restart announces `online` again; SIGTERM drains, says `offline`, exits 0.
        proc = await start_bridge(tmp_path / "run2.log")
        try:
            await wait_for(lambda: status() == b"online", timeout=15, message="online again")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0, (tmp_path / "run2.log").read_text()
        await wait_for(lambda: status() == b"offline", message="offline on SIGTERM")
    run2 = (tmp_path / "run2.log").read_text()
    assert "mqtt connected" in run2
    assert "mqtt closed" in run2
    for m in sub.messages:
        if m.topic.startswith("fleet/event/created/"):
            env = json.loads(m.payload)
            assert m.topic == f"fleet/event/created/{env['data']['ticket']}"
            assert m.qos == 1


# -- content the broker refuses -------------------------------------------------------------


def test_topic_values_never_carry_control_characters() -> None:
    env = event("t\x7f1", cid="a\x01b\nc\x85d\ufffee", severity="\x00").envelope()
    topic = render_topic(ALL, topic_values("fl\x1bt", env))
    assert topic == "fl_t/event.created/event/created/a_b_c_d_e/1/_/t_1"
    assert topic_problem(topic) is None
    assert topic_problem("fleet/\x01/x") == "character U+0001 in the topic"
    assert topic_problem("fleet/#") is not None


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_control_characters_from_the_vendor_never_drop_the_connection(
    tmp_path: Path, broker: Mosquitto, protocol: str
) -> None:
    """`\\x01` or `\\n` in a device CID used to make Mosquitto drop the client, and the
    bridge reconnect and retry forever; now the value stays a clean level."""
    cfg = target_cfg(f"mqtt://127.0.0.1:{broker.port}", protocol=protocol)
    notes = [event("t-1", cid="dev\x01one"), event("t-2", cid="dev\ntwo"), event("t-3")]
    sub_protocol = V5 if protocol == "5" else V311
    with capture_logs() as logs:
        async with (
            Subscriber(broker.port, ("fleet/#",), protocol=sub_protocol) as sub,
            running(tmp_path, cfg) as rig,
        ):
            await rig.enqueue(notes)
            await wait_for(lambda: ids_received(sub) >= {n.id for n in notes})
            await rig.dispatcher.wait_idle()
            assert await rig.counts() == {}
            topics = {by_id(sub, n.id)[0].topic for n in notes}
    assert topics == {"fleet/event/created/dev_one", "fleet/event/created/dev_two",
                      "fleet/event/created/dev-1"}  # fmt: skip
    assert events_named(logs, "mqtt disconnected") == []


async def test_a_topic_the_broker_would_refuse_is_dead_at_once_not_retried(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A control character the operator put in the template: the delivery fails for
    good on the first attempt and the connection (and other topics) stay up."""
    cfg = target_cfg(f"mqtt://127.0.0.1:{broker.port}", topic="{prefix}/\x01/{type_path}")
    n = event("t-1")
    with capture_logs() as logs:
        async with running(tmp_path, cfg) as rig:
            await rig.enqueue([n])
            await wait_for(
                lambda: _counts_are(rig, {"dead": 1}), message="the delivery dead after one try"
            )
            (row,), _ = await rig.store.list_deliveries(target="mq")
            assert row.attempts == 1
            assert "U+0001" in (row.last_error or "")
            assert rig.sender.connected
    assert events_named(logs, "mqtt disconnected") == []


async def _counts_are(rig: Rig, want: dict[str, int]) -> bool:
    return await rig.counts() == want


async def test_payload_characters_mqtt5_refuses_arrive_escaped(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """With the UTF-8 payload flag (MQTT 5), Mosquitto answers a payload holding C1 or
    noncharacters with a PUBACK error that the client library reports as success: the
    message was lost while counted delivered. Escaped, the same JSON arrives."""
    cfg = target_cfg(f"mqtt://127.0.0.1:{broker.port}", protocol="5")
    data = {"ticket": "t-1", "driver": {"name": "Jo\x85\x7fe\ufdd0\U0010ffff"}}
    n = build_notification("event.created", data, base_url="https://x", now=time.time())
    async with (
        Subscriber(broker.port, ("fleet/#",), protocol=V5) as sub,
        running(tmp_path, cfg) as rig,
    ):
        await rig.enqueue([n])
        await wait_for(lambda: ids_received(sub) == {n.id}, message="the escaped payload")
    (m,) = by_id(sub, n.id)
    assert json.loads(m.payload) == json.loads(n.body)
    assert m.payload.decode("ascii", errors="replace").count("\\u") >= 4


async def test_several_replicas_keep_the_shared_status_online_until_the_last_goes(
    broker: Mosquitto,
) -> None:
    cfg = target_cfg(f"mqtt://{HOST}:{broker.port}")
    r1 = MqttSender(cfg, replica="pod-a-1")
    r2 = MqttSender(cfg, replica="pod-b-2")
    await r1.start()
    await r2.start()
    try:
        for replica in ("pod-a-1", "pod-b-2"):
            topic = replica_status_topic("fleet", replica)
            assert topic == f"fleet/bridge/replicas/{replica}/status"
            await wait_retained(broker.port, topic, b"online")
        await wait_for(lambda: r1.connected and r2.connected, message="both connected")
        async with Subscriber(broker.port, (STATUS,)) as sub:
            await r1.close()  # says offline on the shared topic; r2 answers within 1 s
            await wait_for(
                lambda: [m.payload for m in sub.on(STATUS)][-2:] == [b"offline", b"online"],
                timeout=1.5,
                message="the live replica re-announcing online",
            )
        await wait_retained(broker.port, STATUS, b"online")
        await wait_retained(broker.port, replica_status_topic("fleet", "pod-a-1"), b"offline")
    finally:
        await r2.close()
        await r1.close()
    await wait_retained(broker.port, STATUS, b"offline")  # nobody left
    await wait_retained(broker.port, replica_status_topic("fleet", "pod-b-2"), b"offline")


async def test_a_replica_status_comes_back_after_the_broker_restarts(tmp_path: Path) -> None:
    """The broker keeps nothing over a restart here (no persistence): the replica's own
    status connection reconnects and says `online` again; the loss is logged once."""
    topic = replica_status_topic("fleet", "pod-a-1")
    async with Mosquitto(tmp_path / "broker") as broker:
        sender = MqttSender(
            target_cfg(f"mqtt://{HOST}:{broker.port}"),
            replica="pod-a-1",
            reconnect_base_s=0.05,
            reconnect_max_s=0.2,
        )
        with capture_logs() as logs:
            await sender.start()
            try:
                await wait_retained(broker.port, topic, b"online")
                await broker.stop()
                await wait_for(
                    lambda: bool(events_named(logs, "mqtt replica status disconnected")),
                    message="the replica status connection noticing the broker went",
                )
                await broker.start()
                await wait_retained(broker.port, topic, b"online")
            finally:
                await sender.close()
            await wait_retained(broker.port, topic, b"offline")
    assert len(events_named(logs, "mqtt replica status disconnected")) == 1
    assert len(events_named(logs, "mqtt replica status online")) == 2
    assert [e for e in logs if e["log_level"] in ("error", "critical")] == []


async def test_wait_retained_asks_again_when_its_subscriber_got_the_message_live(
    broker: Mosquitto,
) -> None:
    """Published just after the helper's subscriber subscribed, the message reaches that
    subscriber live (retain flag off); the helper must still see it retained."""
    waiting = asyncio.create_task(wait_retained(broker.port, "fleet/x", b"online"))
    try:
        await wait_for(
            lambda: " 2 fleet/x" in broker.log() or waiting.done(),
            message="the helper's subscriber subscribed",
        )
        assert not waiting.done()
        async with aiomqtt.Client(HOST, broker.port) as client:
            await client.publish("fleet/x", b"online", qos=1, retain=True)
        await waiting
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


async def test_replicas_sharing_a_configured_client_id_each_connect_with_their_own(
    broker: Mosquitto,
) -> None:
    # One config for every replica (the Helm chart): a fixed `client_id` used as it is
    # would make each replica's connect knock the other's off the broker.
    cfg = target_cfg(f"mqtt://{HOST}:{broker.port}", client_id="dispatch-bus")
    r1 = MqttSender(cfg, replica="pod-a-1")
    r2 = MqttSender(cfg, replica="pod-b/2")
    await r1.start()
    await r2.start()
    try:
        await wait_for(lambda: r1.connected and r2.connected, message="both connected")
        for replica in ("pod-a-1", "pod-b/2"):
            await wait_retained(broker.port, replica_status_topic("fleet", replica), b"online")
        log = broker.log_file.read_text()
        assert "dispatch-bus-pod-a-1" in log
        assert "dispatch-bus-pod-b_2" in log
        assert "already connected" not in log  # nobody took another's session over
    finally:
        await r2.close()
        await r1.close()
    # Alone (one replica, SQLite), the configured id is used as it is.
    solo = MqttSender(cfg)
    await solo.start()
    try:
        await wait_for(lambda: solo.connected, message="connected")
        assert "New client connected from" in broker.log_file.read_text()
        assert "as dispatch-bus " in broker.log_file.read_text().replace("(", " ")
    finally:
        await solo.close()


def test_a_replica_id_never_adds_a_topic_level() -> None:
    assert replica_status_topic("fleet", "a/b+#\x00") == "fleet/bridge/replicas/a_b___/status"


async def test_a_socket_registration_after_the_connection_closed_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue #9: after SIGSTOP/SIGCONT, aiomqtt's add_writer for the dropped
    # connection's socket ran after the socket was closed: a traceback in the log.
    # This is the same call aiomqtt schedules, on a socket closed meanwhile.
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    try:
        ignore_stale_socket_registrations(loop)
        ignore_stale_socket_registrations(loop)  # idempotent

        def run_after_close(register: Any) -> None:
            a, b = socket.socketpair()
            fd = a.fileno()
            a.close()
            b.close()
            loop.call_soon(register, fd, lambda: None)

        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            run_after_close(loop.add_writer)
            run_after_close(loop.add_reader)
            for _ in range(3):
                await asyncio.sleep(0)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        # Anything else still reaches the previous handler.
        seen: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
        ignore_stale_socket_registrations(loop)
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0)
        assert len(seen) == 1
        assert isinstance(seen[0]["exception"], ZeroDivisionError)
    finally:
        loop.set_exception_handler(previous)
