"""Real Mosquitto brokers for tests, and a subscriber that records what arrives.

`Mosquitto` runs a private `mosquitto` process with a generated config on free
loopback ports in a temp dir, so a test may stop and restart it at will (same
ports). Optional: a TLS listener, a password file, persistence. A missing binary is
a test failure with instructions, never a skip: the suite promises a real broker.

`Subscriber` is an aiomqtt client that subscribes (QoS 2, so every message arrives
with the QoS it was published with) and records each message; it reconnects when the
broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import pytest
from conftest import wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
HOST = "127.0.0.1"


def mosquitto_binary() -> str:
    """The mosquitto executable; fails the test with a clear message when it is missing."""
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "the mosquitto broker is not installed (looked on PATH and in "
            f"{', '.join(MOSQUITTO_PATHS)}); run scripts/ensure-services or "
            "`apt-get install mosquitto`",
            pytrace=False,
        )
    return found


def mosquitto_passwd_binary() -> str:
    """The mosquitto_passwd executable; fails the test when it is missing."""
    found = shutil.which("mosquitto_passwd")
    if found is None:
        pytest.fail(
            "mosquitto_passwd is not installed (it ships with the mosquitto package); "
            "run scripts/ensure-services or `apt-get install mosquitto`",
            pytrace=False,
        )
    return found


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def write_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed by `mosquitto_passwd`)."""
    exe = mosquitto_passwd_binary()
    path.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run([exe, "-b", str(path), user, password], check=True, capture_output=True)
    return path


@dataclass(frozen=True)
class TlsListener:
    """Files for a TLS listener; `require_certificate` asks clients for a certificate."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


class Mosquitto:
    """A private mosquitto process; `port` is plain MQTT, `tls_port` TLS (if configured)."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: TlsListener | None = None,
        password_file: Path | None = None,
        persistence: bool = False,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.password_file = password_file
        self.persistence = persistence
        self.port = free_port()
        self.tls_port = free_port() if tls is not None else None
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def config(self) -> str:
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to `mosquitto`, who can't read tmp
        lines += [
            "per_listener_settings false",
            # One type per line: mosquitto reads only the first word of each.
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_timestamp_format %H:%M:%S",
            # The default drops QoS 1/2 messages beyond 1000 queued for a slow
            # subscriber; a test must see everything the bridge got acknowledged.
            "max_queued_messages 0",
        ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.directory}/"]
        else:
            lines.append("persistence false")
        lines.append(f"listener {self.port} {HOST}")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {HOST}",
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"require_certificate {'true' if self.tls.require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """Start the broker and wait until every listener accepts connections."""
        if self.running:
            return
        exe = mosquitto_binary()
        self.config_file.write_text(self.config())
        with self.log_file.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                exe, "-c", str(self.config_file),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        ports = [p for p in (self.port, self.tls_port) if p is not None]

        async def listening() -> bool:
            if not self.running:
                raise AssertionError(f"mosquitto exited at start-up:\n{self.log()}")
            for port in ports:
                try:
                    _, writer = await asyncio.open_connection(HOST, port)
                except OSError:
                    return False
                writer.close()
                await writer.wait_closed()
            return True

        await wait_for(listening, timeout=10, message=f"mosquitto listening on {ports}")

    async def stop(self) -> None:
        """SIGTERM (mosquitto saves persistence), then wait; SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"

    async def __aenter__(self) -> Mosquitto:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived here


@dataclass
class Subscriber:
    """Subscribes to `topics` and records every message; reconnects when the broker goes."""

    port: int
    topics: Sequence[str] = ("#",)
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311
    username: str | None = None
    password: str | None = None
    # A persistent session (fixed id, clean_session off): with broker persistence the
    # subscription and the messages queued for it survive a broker restart.
    persistent_id: str | None = None
    messages: list[Received] = field(default_factory=list)
    connects: int = 0
    _task: asyncio.Task[None] | None = None

    async def start(self) -> Subscriber:
        self._task = asyncio.create_task(self._run())

        def connected() -> bool:
            assert self._task is not None
            if self._task.done():
                self._task.result()  # raise what killed it
            return self.connects >= 1

        await wait_for(connected, message="subscriber connected")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            session: dict[str, Any] = {}
            if self.persistent_id and self._v311:
                session["clean_session"] = False
            elif self.persistent_id:
                session["clean_start"] = False
                session["properties"] = _session_expiry(3600)
            client = aiomqtt.Client(
                HOST,
                self.port,
                username=self.username,
                password=self.password,
                protocol=self.protocol,
                identifier=self.persistent_id,
                timeout=5,
                **session,
            )
            try:
                async with client:
                    for topic in self.topics:
                        await client.subscribe(topic, qos=2)
                    self.connects += 1
                    async for m in client.messages:
                        props = m.properties
                        self.messages.append(
                            Received(
                                topic=m.topic.value,
                                payload=m.payload if isinstance(m.payload, bytes) else b"",
                                qos=m.qos,
                                retain=m.retain,
                                content_type=getattr(props, "ContentType", None),
                            )
                        )
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)  # reconnect interval, not synchronization

    @property
    def _v311(self) -> bool:
        return self.protocol is aiomqtt.ProtocolVersion.V311

    # -- views ---------------------------------------------------------------------

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def last(self, topic: str) -> bytes | None:
        found = self.payloads(topic)
        return found[-1] if found else None

    async def __aenter__(self) -> Subscriber:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _session_expiry(seconds: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = seconds  # keep the session while the broker restarts
    return props


async def wait_retained(
    port: int, topic: str, expected: bytes, *, timeout: float = 10.0, **kwargs: object
) -> None:
    """Wait until a fresh subscriber is handed `expected` as the retained message on `topic`.

    A subscriber already subscribed when `expected` is published gets it live, with the
    retain flag off (MQTT 3.1.1 §3.3.1.3), which says nothing of what the broker keeps;
    a new subscriber then asks again. (Waiting on the first subscriber alone failed
    whenever it subscribed just before the publish: it never saw a retained copy.)
    """
    deadline = time.monotonic() + timeout
    message = f"a fresh subscriber to get the retained {expected!r} on {topic}"
    while True:
        async with Subscriber(port, (topic,), **kwargs) as sub:  # type: ignore[arg-type]
            try:
                await wait_for(
                    lambda: expected in sub.payloads(topic),
                    timeout=max(0.0, deadline - time.monotonic()),
                    message=message,
                )
            except AssertionError as err:
                got = [(m.payload, "retained" if m.retain else "live") for m in sub.on(topic)]
                raise AssertionError(f"{err}; the last one got {got}") from None
            if any(m.retain and m.payload == expected for m in sub.on(topic)):
                return
