"""Several `fleet-bridge run` processes on one real PostgreSQL database (SPEC §9).

Each test starts real processes (`python -m bridge run`) against a throwaway
database, the simulator and receivers on loopback, then breaks things the way
production does — SIGKILL and SIGSTOP of the poll leader, a 410 from a receiver,
a rate-limited or strictly serial receiver — and counts what matters: tickets
lost, tickets with two `event.created` ids, takeover time, limits violated.
Short `lease_s` keeps them quick; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import wait_for
from mosquitto import HOST as MQTT_HOST
from mosquitto import Mosquitto, Subscriber, wait_retained
from pg_server import create_database, drop_database
from webhook_receiver import SECRET, Receiver, fail_first

from bridge.clock import SystemClock
from bridge.mqtt_topics import replica_status_topic
from bridge.settings import StoreSettings
from bridge.simulator import Simulator, SimulatorConfig
from bridge.store import open_store
from bridge.store.base import FencedOut, IngestTx, Lease, Store, StoreUnavailable
from bridge.store.postgres import PostgresStore

ServerFactory = Callable[..., Awaitable[TestServer]]
LEASE_S = 2.0
STATUS = "fleet/bridge/status"
ADMIN = "replica-test-admin-token"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await create_database("fb_replicas")
    yield url
    await drop_database(url)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[Store]:
    """The test's own view of the shared database (a replica that runs no jobs)."""
    s = open_store(StoreSettings(url=pg_url), SystemClock())
    await s.open()
    yield s
    await s.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


@dataclass
class Cluster:
    """Replicas of one bridge config on one database."""

    tmp: Path
    config: dict[str, Any]
    replicas: list[Replica] = field(default_factory=list)

    async def start(self, n: int) -> list[Replica]:
        started = []
        for _ in range(n):
            port = free_port()
            cfg = dict(self.config, server={**self.config["server"], "port": port})
            path = self.tmp / f"replica-{port}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            log = self.tmp / f"replica-{port}.log"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(path),
                stdout=asyncio.subprocess.DEVNULL, stderr=log.open("wb"),
            )  # fmt: skip
            started.append(Replica(proc, port, log))
        self.replicas += started
        async with aiohttp.ClientSession() as http:
            for r in started:
                await wait_for(lambda r=r: _healthy(http, r), timeout=30, message="a replica up")
        return started

    def by_holder(self, lease: Lease | None) -> Replica | None:
        if lease is None or lease.holder is None:
            return None
        pid = int(lease.holder.rsplit("-", 1)[1])
        return next((r for r in self.replicas if r.proc.pid == pid), None)

    async def stop(self) -> None:
        for r in self.replicas:
            if r.alive:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(signal.SIGCONT)
                    r.proc.send_signal(signal.SIGTERM)
        for r in self.replicas:
            try:
                await asyncio.wait_for(r.proc.wait(), 30)
            except TimeoutError:
                r.proc.kill()
                await r.proc.wait()


async def _healthy(http: aiohttp.ClientSession, r: Replica) -> bool:
    if not r.alive:
        raise AssertionError(f"replica exited: {r.log.read_text()[-2000:]}")
    try:
        async with http.get(r.url + "/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


def bridge_config(pg_url: str, sim_url: str, target: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstream": {
            "base_url": sim_url,
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "page_size": 100,
            "max_requests_per_s": 1000,
        },
        "poll": {"events": {"interval_s": 1, "start_from": "25h", "max_window_s": 3600}},
        "store": {"url": pg_url, "lease_s": LEASE_S, "pool_size": 4},
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5, "admin_token": ADMIN},
        "logging": {"format": "json", "level": "info"},
        "targets": [
            {
                "name": "hook",
                "type": "webhook",
                "url": "",
                "secret": SECRET,
                "retry": {"base_delay_s": 0.2, "max_delay_s": 1},
                **target,
            }
        ],
    }


@pytest.fixture
async def cluster_factory(
    aiohttp_server: ServerFactory, tmp_path: Path, pg_url: str
) -> AsyncIterator[Callable[..., Awaitable[tuple[Cluster, Simulator]]]]:
    clusters: list[Cluster] = []

    async def factory(
        hook_app: web.Application, *, backlog: int, target: dict[str, Any] | None = None
    ) -> tuple[Cluster, Simulator]:
        sim = Simulator(SimulatorConfig(seed=7, devices=40, rate=0.0, backlog=backlog))
        sim_server = await aiohttp_server(sim.app())
        hook_server = await aiohttp_server(hook_app)
        cfg = bridge_config(
            pg_url,
            str(sim_server.make_url("")),
            {"url": str(hook_server.make_url("/hook")), **(target or {})},
        )
        cluster = Cluster(tmp_path, cfg)
        clusters.append(cluster)
        return cluster, sim

    yield factory
    for c in clusters:
        await c.stop()


def assert_each_ticket_once(rec: Receiver, expected: set[str]) -> None:
    """0 tickets lost; 0 tickets with two distinct `event.created` ids."""
    ids: dict[str, set[str]] = defaultdict(set)
    for env in rec.of_type("event.created"):
        ids[env["data"]["ticket"]].add(env["id"])
    lost = expected - set(ids)
    doubled = [t for t, v in ids.items() if len(v) > 1]
    assert (len(lost), len(doubled)) == (0, 0), f"lost {len(lost)}, two ids {len(doubled)}"


async def leader_of(store: Store, cluster: Cluster) -> Replica | None:
    lease = await store.get_lease()
    replica = cluster.by_holder(lease)
    return replica if replica is not None and lease is not None else None


async def test_leader_sigkill_and_sigstop_lose_nothing_and_duplicate_nothing(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]], store: Store
) -> None:
    rec = Receiver()
    cluster, sim = await cluster_factory(rec.app(), backlog=1500)
    expected = {e.item["ticket"] for e in sim.events}
    await cluster.start(3)
    await wait_for(lambda: len(rec.envelopes) >= 200, timeout=60, message="backlog under way")

    # SIGKILL of the leader mid-backlog: another replica takes over within 2 x TTL.
    first = await leader_of(store, cluster)
    assert first is not None
    async with aiohttp.ClientSession() as http:  # only the leader has asked the vendor
        runs = {r.port: await _upstream_requests(http, r) for r in cluster.replicas}
    assert runs[first.port] > 0
    assert [n for port, n in runs.items() if port != first.port] == [0, 0]
    first.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()

    async def new_leader() -> bool:
        r = await leader_of(store, cluster)
        return r is not None and r is not first

    await wait_for(new_leader, timeout=4 * LEASE_S, interval=0.05, message="takeover")
    assert time.monotonic() - killed_at <= 2 * LEASE_S
    await first.proc.wait()

    # SIGSTOP of the new leader past its TTL: the third takes over; SIGCONT later.
    second = await leader_of(store, cluster)
    assert second is not None
    second.proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()

    async def third_leads() -> bool:
        r = await leader_of(store, cluster)
        return r is not None and r not in (first, second)

    await wait_for(third_leads, timeout=4 * LEASE_S, interval=0.05, message="takeover")
    assert time.monotonic() - stopped_at <= 2 * LEASE_S
    second.proc.send_signal(signal.SIGCONT)

    await wait_for(
        lambda: set(rec.tickets()) >= expected, timeout=120, message="every ticket delivered"
    )
    assert_each_ticket_once(rec, expected)
    assert await store.count_notifications("event.created") == len(expected)
    # After the thaw only one replica leads (the thawed one learned it lost).
    async with aiohttp.ClientSession() as http:

        async def one_leader() -> bool:
            gauges = [await _leader_gauge(http, r) for r in cluster.replicas if r.alive]
            return sorted(gauges) == [0, 1]

        await wait_for(one_leader, timeout=4 * LEASE_S, message="exactly one leader")


async def _upstream_requests(http: aiohttp.ClientSession, r: Replica) -> float:
    async with http.get(r.url + "/metrics") as resp:
        text = await resp.text()
    return sum(
        float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("bridge_upstream_requests_total{")
    )


async def _leader_gauge(http: aiohttp.ClientSession, r: Replica) -> int:
    async with http.get(r.url + "/metrics") as resp:
        text = await resp.text()
    line = next(ln for ln in text.splitlines() if ln.startswith("bridge_poll_leader "))
    return int(float(line.split()[1]))


async def test_a_410_pause_is_resumed_through_another_replica(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]], store: Store
) -> None:
    rec = Receiver(behaviour=fail_first(1, status=410))
    cluster, sim = await cluster_factory(rec.app(), backlog=30)
    expected = {e.item["ticket"] for e in sim.events}
    replicas = await cluster.start(2)

    async def paused() -> bool:
        return (await store.get_target_state("hook")).paused

    await wait_for(paused, timeout=30, message="the 410 pause")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        # Every replica sees the pause: nothing is sent while it lasts.
        async def both_show_paused() -> bool:
            views = []
            for r in replicas:
                async with http.get(r.url + "/api/v1/status") as resp:
                    views.append((await resp.json())["targets"]["hook"]["paused"])
            return views == [True, True]

        await wait_for(both_show_paused, timeout=10, message="both replicas paused")
        # Sends already under way when the 410 came back may still land (up to
        # max_in_flight per replica); once both replicas show the pause, nothing more
        # goes out, and most of the backlog is still waiting for the resume.
        at_pause = rec.requests
        assert 1 <= at_pause <= 1 + 2 * 8
        assert len(set(rec.tickets())) < len(expected)
        await wait_for(both_show_paused, timeout=10, message="both replicas still paused")
        assert rec.requests == at_pause
        # Resume through the replica that did not get the 410 (or either: both work).
        async with http.post(replicas[-1].url + "/api/v1/targets/hook/resume") as resp:
            assert resp.status == 200, await resp.text()
    await wait_for(lambda: set(rec.tickets()) >= expected, timeout=60, message="all after resume")
    assert_each_ticket_once(rec, expected)
    assert rec.requests == 1 + len(rec.envelopes)  # one 410, then only successes


async def test_rate_limit_holds_for_the_target_across_replicas(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]],
) -> None:
    rec = Receiver()
    rate = 2.0
    cluster, sim = await cluster_factory(rec.app(), backlog=12, target={"rate_limit_per_s": rate})
    expected = {e.item["ticket"] for e in sim.events}
    await cluster.start(3)
    await wait_for(lambda: set(rec.tickets()) >= expected, timeout=60, message="all delivered")
    assert_each_ticket_once(rec, expected)
    gaps = [b - a for a, b in zip(rec.request_times, rec.request_times[1:], strict=False)]
    # Slots are 1/rate apart in the database; arrival jitter on loopback is small.
    assert min(gaps) >= 1 / rate - 0.1, gaps


@dataclass
class SerialReceiver(Receiver):
    """A slow receiver that records how many requests it ever had at once."""

    active: int = 0
    max_active: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self._counted)
        return app

    async def _counted(self, request: web.Request) -> web.Response:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(0.02)  # the receiver's work, not synchronization
            return await self._handle(request)
        finally:
            self.active -= 1


async def test_max_in_flight_1_never_sends_two_at_once_across_replicas(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]], store: Store
) -> None:
    rec = SerialReceiver()
    cluster, sim = await cluster_factory(rec.app(), backlog=40, target={"max_in_flight": 1})
    expected = {e.item["ticket"] for e in sim.events}
    await cluster.start(3)
    await wait_for(lambda: set(rec.tickets()) >= expected, timeout=90, message="all delivered")
    assert_each_ticket_once(rec, expected)
    assert rec.max_active == 1
    # Strict FIFO: they arrive in the order their deliveries were created.
    rows, _ = await store.list_deliveries(limit=1000)
    queued = [r.notification_id for r in sorted(rows, key=lambda r: r.id)]
    assert [e["id"] for e in rec.envelopes] == queued


async def test_max_in_flight_holds_for_the_target_across_replicas(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]],
) -> None:
    """The cap is on sends of all replicas together (in-flight slots), while each replica
    claims ahead: the slow receiver never sees more than 3 requests at once."""
    rec = SerialReceiver()
    cluster, sim = await cluster_factory(rec.app(), backlog=120, target={"max_in_flight": 3})
    expected = {e.item["ticket"] for e in sim.events}
    await cluster.start(3)
    await wait_for(lambda: set(rec.tickets()) >= expected, timeout=90, message="all delivered")
    assert_each_ticket_once(rec, expected)
    assert rec.max_active <= 3
    assert rec.max_active >= 2  # not one send at a time: replicas send side by side


async def test_a_failing_target_is_probed_once_for_all_replicas(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]], store: Store
) -> None:
    """SPEC §4 + §9: three replicas send one probe at the single-target cadence,
    not three; after the receiver recovers, everything waiting arrives at once."""
    answer = {"status": 503}
    rec = Receiver(behaviour=lambda _n: (answer["status"], {}))
    cadence = 1.0  # base_delay_s = max_delay_s: every probe one second after the last
    cluster, sim = await cluster_factory(
        rec.app(),
        backlog=30,
        target={"retry": {"base_delay_s": cadence, "max_delay_s": cadence}},
    )
    expected = {e.item["ticket"] for e in sim.events}
    await cluster.start(3)

    async def failing() -> bool:
        return (await store.get_target_state("hook")).failing

    await wait_for(failing, timeout=30, message="the target failing")
    # Sends already under way when it began failing answer within milliseconds;
    # once the receiver has been quiet for half the cadence, only probes go.
    await wait_for(
        lambda: time.monotonic() - rec.request_times[-1] > cadence / 2,
        timeout=10,
        message="the sends under way to end",
    )
    start = len(rec.request_times)
    before = await attempts_by_id(store)
    await wait_for(lambda: rec.requests >= start + 6, timeout=20, message="six probes")
    probes = rec.request_times[start:]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    # One probe a second for the target as a whole; a probe per replica would
    # leave gaps of about a third of that.
    assert min(gaps) >= 0.7 * cadence, gaps
    assert await failing()

    answer["status"] = 200
    recovered_at = len(rec.request_times)
    await wait_for(lambda: set(rec.tickets()) >= expected, timeout=30, message="all delivered")
    flowed = rec.request_times[recovered_at:]
    # The first success (the next probe) released every replica: the rest followed
    # within moments, not at the probe cadence or each replica's own backoff.
    assert flowed[-1] - flowed[0] < 2 * cadence, flowed[-1] - flowed[0]
    assert_each_ticket_once(rec, expected)
    assert not await failing()
    # Waiting deliveries used no attempts while the target failed: one row carried
    # the probes, every other one was attempted once more (its success) at most.
    after = await attempts_by_id(store)
    spent = sorted(after[i] - before.get(i, 0) for i in after)
    assert (spent[-2] <= 1, spent[-1] >= 6) == (True, True), spent


async def attempts_by_id(store: Store) -> dict[int, int]:
    rows, _ = await store.list_deliveries(limit=1000)
    return {r.id: r.attempts for r in rows}


async def test_a_killed_replica_goes_offline_by_its_will_and_the_shared_status_stays_online(
    aiohttp_server: ServerFactory, tmp_path: Path, pg_url: str
) -> None:
    """SPEC §6.3 with real processes: SIGKILL leaves no clean `offline`, only wills."""
    sim = Simulator(SimulatorConfig(seed=7, devices=4, rate=0.0, backlog=0))
    sim_server = await aiohttp_server(sim.app())
    async with Mosquitto(tmp_path / "broker") as broker:
        cfg = bridge_config(pg_url, str(sim_server.make_url("")), {})
        cfg["targets"] = [
            {"name": "mq", "type": "mqtt", "url": f"mqtt://{MQTT_HOST}:{broker.port}"}
        ]
        cluster = Cluster(tmp_path, cfg)
        try:
            async with Subscriber(broker.port, ("fleet/bridge/#",)) as sub:
                first, second = await cluster.start(2)
                topics = {r.port: own_topic(r) for r in (first, second)}

                def says(topic: str, payload: bytes) -> bool:
                    return sub.last(topic) == payload

                await wait_for(
                    lambda: all(says(t, b"online") for t in topics.values()),
                    timeout=15,
                    message="both replicas online on their own topics",
                )
                await wait_for(lambda: says(STATUS, b"online"), message="shared status online")
                shared_before = len(sub.on(STATUS))

                first.proc.send_signal(signal.SIGKILL)
                await first.proc.wait()
                # The broker sees the socket close and publishes both of its wills.
                await wait_for(
                    lambda: says(topics[first.port], b"offline"),
                    timeout=5,
                    message="the killed replica's own will",
                )
                await wait_for(
                    lambda: b"offline" in sub.payloads(STATUS)[shared_before:],
                    timeout=5,
                    message="the killed replica's will on the shared topic",
                )
                offline_at = next(
                    m.at for m in sub.on(STATUS)[shared_before:] if m.payload == b"offline"
                )
                await wait_for(
                    lambda: says(STATUS, b"online"),
                    timeout=5,
                    message="the live replica re-announcing online",
                )
                online_at = sub.on(STATUS)[-1].at
                assert online_at - offline_at < 1.0  # within 1 s of seeing offline
                assert says(topics[second.port], b"online")
            await wait_retained(broker.port, STATUS, b"online")
            await wait_retained(broker.port, topics[first.port], b"offline")

            second.proc.send_signal(signal.SIGKILL)
            await second.proc.wait()
            await wait_retained(broker.port, STATUS, b"offline")  # nobody left
            await wait_retained(broker.port, topics[second.port], b"offline")
        finally:
            await cluster.stop()


def own_topic(r: Replica) -> str:
    """The replica's own status topic; its id is host and pid (`bridge.lease.replica_id`)."""
    return replica_status_topic("fleet", f"{socket.gethostname()}-{r.proc.pid}")


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that can be cut (connections dropped, new ones
    refused) and restored: the database 'going away' without touching the shared server."""

    def __init__(self, upstream_port: int = 5432) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def cut(self) -> None:
        self._cuts += 1
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cuts = self._cuts
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        if cuts != self._cuts:
            # Accepted before a cut and connected after it: a cut drops every connection.
            writer.close()
            up_writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_postgresql_lost_while_running_waits_logs_once_and_loses_nothing(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]], pg_url: str
) -> None:
    proxy = TcpProxy()
    await proxy.start()
    rec = Receiver()
    cluster, sim = await cluster_factory(rec.app(), backlog=20)
    parts = pg_url.split("@", 1)
    cluster.config["store"]["url"] = (
        parts[0] + "@" + parts[1].replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    )
    [replica] = await cluster.start(1)
    expected = {e.item["ticket"] for e in sim.events}
    await wait_for(lambda: set(rec.tickets()) >= expected, timeout=30, message="first backlog")

    async with aiohttp.ClientSession() as http:

        async def ready(want: int) -> bool:
            async with http.get(replica.url + "/readyz") as resp:
                return resp.status == want

        await wait_for(lambda: ready(200), timeout=10, message="ready")
        await proxy.cut()
        await wait_for(lambda: ready(503), timeout=20, message="/readyz 503 while it is gone")
        # Work arriving meanwhile waits (the vendor still answers; the store does not).
        late = {sim.add_event(timestamp=int(time.time()) - 5)["ticket"] for _ in range(5)}
        await wait_for(lambda: ready(503), timeout=5, message="still 503")
        await proxy.start()
        await wait_for(lambda: ready(200), timeout=30, message="ready again")
    await wait_for(
        lambda: set(rec.tickets()) >= expected | late, timeout=60, message="nothing lost"
    )
    assert_each_ticket_once(rec, expected | late)
    lines = [json.loads(ln) for ln in replica.log.read_text().splitlines() if ln.startswith("{")]
    events = [ln["event"] for ln in lines]
    assert events.count("store unavailable") == 1, events
    assert events.count("store available again") == 1, events
    await proxy.cut()


@pytest.mark.parametrize("opened", [True, False], ids=["transaction-open", "writes-waiting"])
async def test_a_leader_frozen_inside_a_transaction_does_not_block_the_takeover(
    pg_url: str, opened: bool
) -> None:
    clock = SystemClock()
    frozen, taker = (PostgresStore(pg_url, clock, lease_s=1.0) for _ in range(2))
    await frozen.open()
    await taker.open()
    try:
        lease = await frozen.acquire_lease("frozen", 1.0)
        assert lease is not None
        frozen.set_fence("frozen", lease.epoch)
        inside, thaw = asyncio.Event(), asyncio.Event()

        async def stuck(tx: IngestTx) -> None:
            await tx.set_cursor("events", 1.0)
            if opened:
                # A read after a write opens a transaction and writes the cursor into
                # it: the fence now holds the lease row (FOR SHARE).
                await tx.seen_tickets(["tk"])
            inside.set()
            await thaw.wait()  # SIGSTOP: the transaction stays open, idle

        ingest = asyncio.create_task(frozen.ingest(stuck))
        await inside.wait()
        started = time.monotonic()

        async def taken() -> bool:
            return await taker.acquire_lease("taker", 30) is not None

        await wait_for(taken, timeout=10, interval=0.1, message="the takeover")
        assert time.monotonic() - started <= 2 * 1.0 + 0.5
        thaw.set()  # SIGCONT
        # Rolled back by the server (idle in a transaction), or refused by the fence
        # when the waiting writes go in: either way the cursor did not move.
        with pytest.raises(StoreUnavailable if opened else FencedOut):
            await ingest
        assert await taker.get_cursor("events") is None
    finally:
        await frozen.close()
        await taker.close()
