"""The dispatcher around a real webhook receiver: failing-target probes, whole-target
Retry-After holds, redaction at dispatch, paused targets bounded by max_age_s, and
store outages logged once per streak.

The dispatcher runs on a FakeClock (started at the real time, so the receiver's
Standard Webhooks check accepts the signed timestamps) over a real SQLite store.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import wait_for
from pg_server import truncate
from structlog.testing import capture_logs
from webhook_receiver import SECRET, Receiver

from bridge.clock import FakeClock
from bridge.dispatch import Dispatcher, dispatch_options
from bridge.metrics import Metrics
from bridge.notifications import Notification, build_notification
from bridge.settings import WebhookTarget
from bridge.store.base import DeliveryState, NewNotification
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from bridge.targets.webhook import WebhookSender

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Switch:
    """A receiver behaviour the test flips: status and headers for every request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    first: tuple[int, dict[str, str]] | None = None

    def __call__(self, n: int) -> tuple[int, dict[str, str]]:
        if n == 1 and self.first is not None:
            return self.first
        return self.status, self.headers


@dataclass
class Rig:
    clock: FakeClock
    store: SqliteStore
    receiver: Receiver
    dispatcher: Dispatcher
    metrics: Metrics

    async def enqueue(self, notes: list[Notification], target: str = "hook") -> None:
        async def fn(tx: Any) -> None:
            await tx.add_notifications([NewNotification(n, [target]) for n in notes])

        await self.store.ingest(fn)

    async def counts(self) -> dict[str, int]:
        return (await self.store.queue_counts()).get("hook", {})

    async def step(self, seconds: float = 1.0) -> None:
        """Move the clock, then let the dispatcher act on it until it is parked again."""
        self.clock.advance(seconds)
        await self.quiet()

    async def quiet(self) -> None:
        """Wait until the feeder sleeps on the clock again with nothing in progress."""
        await asyncio.sleep(0)  # let the tasks the clock woke take their turn first
        await wait_for(
            lambda: self.clock.sleepers >= 1 and self.dispatcher.in_progress == 0,
            message="dispatcher parked",
        )
        await self.dispatcher.wait_idle()


def note(i: int, **data: Any) -> Notification:
    payload = {"ticket": f"t-{i}", "driver": {"id": 7, "name": "Jane Doe"}, **data}
    return build_notification("event.created", payload, base_url="https://f.example", now=0)


@contextlib.asynccontextmanager
async def running(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    behaviour: Any,
    *,
    url: str | None = None,
    **target: Any,
) -> AsyncIterator[Rig]:
    clock = FakeClock(start=time.time())
    receiver = Receiver(behaviour=behaviour)
    server = await aiohttp_server(receiver.app())
    cfg = WebhookTarget.model_validate(
        {
            "name": "hook",
            "type": "webhook",
            "url": url or str(server.make_url("/hook")),
            "secret": SECRET,
            **target,
        }
    )
    store = SqliteStore(tmp_path / "bridge.db", clock)
    await store.open()
    metrics = Metrics()
    sender = WebhookSender(cfg, clock=clock)
    dispatcher = Dispatcher(dispatch_options(cfg), sender, store, clock, metrics)
    await dispatcher.start()
    try:
        yield Rig(clock, store, receiver, dispatcher, metrics)
    finally:
        await dispatcher.stop(5)
        await store.close()


async def test_a_failing_target_is_probed_not_hammered_and_drains_at_once_after(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # Issue #9: a receiver answering 503 without Retry-After got 23 requests/s, and
    # after it came back the last waiting delivery arrived 698 s later.
    switch = Switch(503)
    retry = {"base_delay_s": 1, "max_delay_s": 8}
    async with running(aiohttp_server, tmp_path, switch, retry=retry) as rig:
        with capture_logs() as logs:
            await rig.enqueue([note(i) for i in range(100)])
            await wait_for(lambda: rig.dispatcher.state.failing, message="failing")
            await rig.quiet()
            before = rig.receiver.requests
            # At most the streak plus the sends already under way when it began.
            assert Dispatcher.FAILING_AFTER <= before <= Dispatcher.FAILING_AFTER + 8
            assert rig.metrics.target_failing.labels(target="hook")._value.get() == 1
            stored = await rig.store.get_target_state("hook")
            assert stored.failing
            for _ in range(60):
                await rig.step(1.0)
            probes = rig.receiver.requests - before
            # One probe at 1, 2, 4, 8, 8, … s: about ten in a minute, not thousands.
            assert 5 <= probes <= 12
            rows, _ = await rig.store.list_deliveries(target="hook", limit=1000)
            # Waiting deliveries burn no attempts: only the probes and the streak did.
            assert sum(r.attempts for r in rows) == rig.receiver.requests
            assert all(r.state is DeliveryState.PENDING for r in rows)
            switch.status = 200
            # The next probe succeeds; everything waiting flows at once, without
            # moving the clock any further.
            await rig.step(8.0)
            await wait_for(lambda: len(rig.receiver.envelopes) == 100, message="drained")
            await rig.dispatcher.wait_idle()
        assert (await rig.counts())["pending"] == 0
        assert not rig.dispatcher.state.failing
        assert not (await rig.store.get_target_state("hook")).failing
        assert rig.dispatcher.health.last_error is None
        events = [e["event"] for e in logs if e.get("target") == "hook"]
        assert events.count("target failing; probing with one delivery at a time") == 1
        assert events.count("target recovered") == 1


async def test_probing_survives_a_restart(aiohttp_server: ServerFactory, tmp_path: Path) -> None:
    switch = Switch(503)
    async with running(aiohttp_server, tmp_path, switch, retry={"max_delay_s": 4}) as rig:
        await rig.enqueue([note(i) for i in range(20)])
        await wait_for(lambda: rig.dispatcher.state.failing, message="failing")
        await rig.quiet()
    async with running(aiohttp_server, tmp_path, switch, retry={"max_delay_s": 4}) as rig:
        assert rig.dispatcher.state.failing
        assert rig.dispatcher.health.failing
        await rig.quiet()
        assert rig.receiver.requests == 0  # no burst of every pending delivery at start
        for _ in range(4):
            await rig.step(1.0)
        assert 1 <= rig.receiver.requests <= 2


async def test_retry_after_holds_the_whole_target(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    switch = Switch(200, first=(503, {"Retry-After": "30"}))
    async with running(aiohttp_server, tmp_path, switch, max_in_flight=1) as rig:
        await rig.enqueue([note(0)])
        await wait_for(lambda: rig.receiver.requests == 1, message="the 503")
        await rig.quiet()
        hold = rig.dispatcher.state.hold_until
        assert hold is not None
        assert abs(hold - (rig.clock.now() + 30)) < 1
        assert (await rig.store.get_target_state("hook")).hold_until == hold
        # New deliveries are due at once, yet nothing goes out during the hold.
        await rig.enqueue([note(i) for i in range(1, 10)])
        for _ in range(28):
            await rig.step(1.0)
        assert rig.receiver.requests == 1
        assert rig.dispatcher.reason == "held by the receiver's Retry-After"
        await rig.step(3.0)
        await wait_for(lambda: len(rig.receiver.envelopes) == 10, message="all after the hold")


async def test_redaction_happens_at_dispatch_and_the_signature_covers_it(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with running(
        aiohttp_server, tmp_path, Switch(200), redact=["driver.name", "location"]
    ) as rig:
        n = note(1, location={"lat": 1.5, "lng": 2.5})
        await rig.enqueue([n])
        await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="delivery")
        (env,) = rig.receiver.envelopes  # the receiver verified its signature
        assert rig.receiver.rejected_signatures == 0
        assert env["id"] == n.id
        assert env["data"]["driver"] == {"id": 7}
        assert "location" not in env["data"]
        # The store keeps the full notification: another target or a replay gets it all.
        with sqlite3.connect(tmp_path / "bridge.db") as conn:
            (body,) = conn.execute("SELECT body FROM notifications").fetchone()
        assert body == n.body
        assert "Jane Doe" in body


async def test_a_paused_target_keeps_deliveries_only_until_max_age(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    switch = Switch(410)
    async with running(aiohttp_server, tmp_path, switch, retry={"max_age_s": 100}) as rig:
        await rig.enqueue([note(0)])
        await wait_for(lambda: rig.dispatcher.paused, message="paused")
        await rig.quiet()
        await rig.enqueue([note(i) for i in range(1, 5)])
        await rig.step(50)
        assert (await rig.counts())["pending"] == 5  # kept while young: a resume sends them
        assert rig.dispatcher.reason is not None
        assert rig.dispatcher.reason.startswith("paused")
        await rig.step(Dispatcher.EXPIRY_CHECK_S + 60)
        await wait_for(lambda: rig.clock.sleepers >= 1)
        counts = await rig.counts()
        assert (counts["pending"], counts["dead"]) == (0, 5)
        assert rig.receiver.requests == 1


async def test_store_outage_is_logged_once_and_recovery_once(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # Issue #10: a traceback every 50 ms from the flusher, every second from the feeder.
    async with running(aiohttp_server, tmp_path, Switch(200), max_in_flight=1) as rig:
        errors = rig.metrics.store_errors
        await rig.enqueue([note(0)])
        await wait_for(lambda: len(rig.receiver.envelopes) == 1)
        await rig.dispatcher.wait_idle()
        with capture_logs() as logs:
            await rig.store.close()
            rig.dispatcher.wake()
            # The feeder retries every second of clock time; each retry fails.
            for k in range(1, 5):
                await wait_for(
                    lambda k=k: errors.labels(component="dispatcher")._value.get() >= k,
                    message=f"feeder failure {k}",
                )
                rig.clock.advance(1.0)
            await rig.store.open()
            await rig.step(1.0)
            await rig.enqueue([note(1)])
            await wait_for(lambda: len(rig.receiver.envelopes) == 2, message="after recovery")
        lines = [e for e in logs if e.get("target") == "hook"]
        failed = [e for e in lines if e["event"] == "dispatcher store access failed; retrying"]
        assert len(failed) == 1
        assert failed[0]["log_level"] == "warning"
        assert "exc_info" not in failed[0]
        recovered = [e for e in lines if e["event"] == "dispatcher store access recovered"]
        assert len(recovered) == 1


async def test_outcomes_kept_through_a_store_outage_and_logged_once(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def gated(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/gated", gated)
    gate = await aiohttp_server(app)
    url = str(gate.make_url("/gated"))
    async with running(aiohttp_server, tmp_path, Switch(200), url=url, max_in_flight=1) as rig:
        errors = rig.metrics.store_errors.labels(component="outcome_flusher")
        with capture_logs() as logs:
            await rig.enqueue([note(0)])
            await wait_for(entered.is_set, message="send under way")
            await rig.store.close()
            release.set()
            await wait_for(lambda: errors._value.get() >= 4, message="flush failures")
            await rig.store.open()

            async def delivered() -> bool:
                rows, _ = await rig.store.list_deliveries(target="hook")
                return [(r.state, r.attempts) for r in rows] == [(DeliveryState.DELIVERED, 1)]

            await wait_for(delivered, message="the outcome written after the outage")
        lines = [e for e in logs if e.get("target") == "hook"]
        failed = [e for e in lines if e["event"] == "recording delivery outcomes failed; retrying"]
        assert len(failed) == 1
        assert "exc_info" not in failed[0]
        assert [e["event"] for e in lines].count("recording delivery outcomes recovered") == 1


async def test_dead_deliveries_are_logged_once_until_the_next_success(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    switch = Switch(400)
    async with running(aiohttp_server, tmp_path, switch) as rig:
        with capture_logs() as logs:
            await rig.enqueue([note(i) for i in range(20)])
            await wait_for(lambda: rig.receiver.requests == 20, message="20 refusals")
            await rig.dispatcher.wait_idle()
            switch.status = 200
            await rig.enqueue([note(20)])
            await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="a success")
            switch.status = 400
            await rig.enqueue([note(21)])
            await wait_for(lambda: rig.receiver.requests == 22, message="another refusal")
            await rig.dispatcher.wait_idle()
        assert (await rig.counts())["dead"] == 21
        assert not rig.dispatcher.state.failing  # the receiver answers: not failing
        dead = [e for e in logs if e["event"] == "delivery dead"]
        assert [e["status"] for e in dead] == [400, 400]


async def hook_of_two_slots(aiohttp_server: ServerFactory) -> tuple[Receiver, WebhookTarget]:
    """A receiver that takes everything, and a webhook target to it with max_in_flight 2."""
    receiver = Receiver(behaviour=Switch(200))
    server = await aiohttp_server(receiver.app())
    cfg = WebhookTarget.model_validate(
        {
            "name": "hook",
            "type": "webhook",
            "url": str(server.make_url("/hook")),
            "secret": SECRET,
            "max_in_flight": 2,
        }
    )
    return receiver, cfg


async def test_on_a_shared_store_a_send_waits_for_an_in_flight_slot(
    aiohttp_server: ServerFactory, pg_database: str
) -> None:
    """Several replicas: rows are claimed ahead, but a send starts only within this
    replica's share of max_in_flight (another replica holds both slots here)."""
    clock = FakeClock(start=time.time())
    receiver, cfg = await hook_of_two_slots(aiohttp_server)
    store, other = PostgresStore(pg_database, clock), PostgresStore(pg_database, clock)
    await store.open()  # migrates a fresh database
    await other.open()
    await truncate(pg_database)  # the database is shared by the run's tests

    async def shares() -> list[tuple[int, int]]:
        conn = await asyncpg.connect(pg_database)
        try:
            rows = await conn.fetch(
                "SELECT granted, wanted FROM in_flight_shares WHERE replica <> 'other'"
            )
        finally:
            await conn.close()
        return [(r[0], r[1]) for r in rows]

    share = {"max_in_flight": 2, "replica": "other"}
    held = await other.claim_share("hook", clock.now(), 0, sending=2, queued=2, **share)
    assert held.share == 2
    sender = WebhookSender(cfg, clock=clock)
    first = Dispatcher(dispatch_options(cfg), sender, store, clock, Metrics())
    await first.start()
    try:

        async def fn(tx: Any) -> None:
            await tx.add_notifications([NewNotification(note(i), ["hook"]) for i in range(5)])

        await store.ingest(fn)
        # Claimed ahead (all five wait in the dispatcher), told its share is 0.
        await wait_for(lambda: first.in_progress == 5, message="rows claimed ahead")
        assert await shares() == [(0, 2)]
        assert receiver.requests == 0
    finally:
        await first.stop(5)
    # A clean stop gives the unsent rows back and says it wants no slots.
    assert await shares() == [(0, 0)]
    assert (await store.queue_counts())["hook"]["pending"] == 5

    # The other replica stops too: its slots are free for the next dispatcher.
    await other.claim_share("hook", clock.now(), 0, sending=0, queued=0, **share)
    second = Dispatcher(dispatch_options(cfg), sender, store, clock, Metrics())
    await second.start()
    try:
        await wait_for(lambda: receiver.requests == 5, message="all five sent")
        await second.wait_idle()
        assert (await store.queue_counts())["hook"]["pending"] == 0
    finally:
        await second.stop(5)
    await store.close()
    await other.close()


async def test_a_replica_whose_work_ran_out_soon_frees_the_slots_it_held(
    aiohttp_server: ServerFactory, pg_database: str
) -> None:
    """Its last claim said it held its share, so the store kept those slots for it;
    it says it holds none well before its idle re-check (2 s), or the others would
    wait that long for them."""
    clock = FakeClock(start=time.time())
    receiver, cfg = await hook_of_two_slots(aiohttp_server)
    store = PostgresStore(pg_database, clock)
    await store.open()
    await truncate(pg_database)

    async def recorded() -> list[tuple[int, int]]:
        conn = await asyncpg.connect(pg_database)
        try:
            return [
                tuple(r) for r in await conn.fetch("SELECT granted, wanted FROM in_flight_shares")
            ]
        finally:
            await conn.close()

    sender = WebhookSender(cfg, clock=clock)
    dispatcher = Dispatcher(dispatch_options(cfg), sender, store, clock, Metrics())
    await dispatcher.start()
    try:

        async def fn(tx: Any) -> None:
            await tx.add_notifications([NewNotification(note(i), ["hook"]) for i in range(5)])

        await store.ingest(fn)
        await wait_for(lambda: receiver.requests == 5, message="all five sent")
        await dispatcher.wait_idle()
        started = clock.monotonic()

        async def freed() -> bool:
            # Time moves in small steps, never as far as the idle re-check.
            if clock.monotonic() - started < 1.0:
                clock.advance(0.05)
            return await recorded() == [(0, 0)]

        await wait_for(freed, message="the slots given up")
        assert clock.monotonic() - started < Dispatcher.IDLE_RECHECK_S
    finally:
        await dispatcher.stop(5)
    await store.close()
