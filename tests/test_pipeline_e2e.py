"""End to end: simulator → bridge (poll, de-dup, SQLite outbox, dispatch) → real receivers.

The simulator and the bridge share one FakeClock, so windows, late events and retry
schedules move only when a test says so; receivers verify every signature with the
`standardwebhooks` library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import wait_for
from envelope_schema import validate_envelope
from structlog.testing import capture_logs
from webhook_receiver import SECRET, Receiver, always, fail_first

from bridge.app import BRIDGE, Bridge, build_app
from bridge.clock import FakeClock, SystemClock
from bridge.settings import Settings, settings_from_dict
from bridge.simulator import Simulator, SimulatorConfig
from bridge.store.base import DeliveryState

ServerFactory = Callable[..., Awaitable[TestServer]]


@dataclass
class Rig:
    clock: FakeClock
    sim: Simulator
    bridge: Bridge
    receivers: dict[str, Receiver]

    async def poll(self) -> None:
        assert self.bridge.scheduler is not None
        await self.bridge.scheduler.run_now("events")

    async def settle(self, target: str | None = None) -> None:
        """Wait until every dispatcher has nothing in flight and outcomes are written."""
        for name, d in self.bridge.dispatchers.items():
            if target is None or name == target:
                await d.wait_idle()

    async def counts(self) -> dict[str, dict[str, int]]:
        assert self.bridge.store is not None
        return await self.bridge.store.queue_counts()

    async def advance_until(
        self, condition: Callable[[], bool], *, step: float = 1.0, limit: float = 240.0
    ) -> None:
        """Move the fake clock in steps until `condition` holds (retry schedules)."""
        moved = 0.0
        deadline = time.monotonic() + 20
        while not condition():
            if moved >= limit or time.monotonic() > deadline:
                raise AssertionError("condition not reached while advancing the clock")
            self.clock.advance(step)
            moved += step
            for _ in range(20):
                await asyncio.sleep(0.005)
                if condition():
                    return


def make_settings(sim_url: str, db: Path, targets: list[dict[str, Any]], **events: Any) -> Settings:
    poll_events = {
        "interval_s": 3600,
        "lookback_s": 900,
        "max_window_s": 3600,
        "start_from": "25h",
        **events,
    }
    return settings_from_dict(
        {
            "upstream": {
                "base_url": sim_url,
                "api_key": "sim-key",
                "auth": {"token": "sim-token"},
                "page_size": 50,
                "max_requests_per_s": 1000,
            },
            "poll": {"events": poll_events},
            "store": {"url": f"sqlite:///{db}"},
            "logging": {"format": "json"},
            "targets": targets,
        },
        {},
    )


def webhook(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "url": url,
        "secret": SECRET,
        "retry": {"base_delay_s": 0.5, "max_delay_s": 2, "max_attempts": 6},
        **extra,
    }


@pytest.fixture
def make_rig(aiohttp_server: ServerFactory, tmp_path: Path) -> Callable[..., Awaitable[Rig]]:
    """Builds simulator + receivers + bridge; pytest-aiohttp tears the servers down."""

    async def factory(
        receivers: dict[str, Receiver],
        *,
        backlog: int = 0,
        target_extra: dict[str, dict[str, Any]] | None = None,
        extra_targets: list[dict[str, Any]] | None = None,
        **events: Any,
    ) -> Rig:
        # Real "now", so standardwebhooks accepts the signed timestamps.
        clock = FakeClock(start=time.time())
        sim = Simulator(
            SimulatorConfig(seed=7, devices=12, rate=0.0, backlog=backlog, base_time=clock.now()),
            clock=clock,
        )
        sim_server = await aiohttp_server(sim.app())
        targets = []
        for name, rec in receivers.items():
            rec_server = await aiohttp_server(rec.app())
            targets.append(
                webhook(
                    name, str(rec_server.make_url("/hook")), **(target_extra or {}).get(name, {})
                )
            )
        targets.extend(extra_targets or [])
        settings = make_settings(
            str(sim_server.make_url("")), tmp_path / "bridge.db", targets, **events
        )
        app = build_app(settings, clock=clock, upstream_clock=SystemClock())
        await aiohttp_server(app)
        rig = Rig(clock=clock, sim=sim, bridge=app[BRIDGE], receivers=receivers)
        await rig.poll()  # the scheduler's first run (or this one)
        return rig

    return factory


def visible_tickets(sim: Simulator) -> set[str]:
    return {e.item["ticket"] for e in sim.events}


async def test_every_ticket_delivered_exactly_once_and_valid(make_rig: Any) -> None:
    rec = Receiver()
    rig: Rig = await make_rig({"hook": rec}, backlog=400)
    await wait_for(lambda: len(rec.envelopes) >= 400, message="400 deliveries")
    await rig.settle()
    expected = visible_tickets(rig.sim)
    assert len(expected) == 400
    assert rec.tickets() == {t: 1 for t in expected}
    for env in rec.envelopes:
        validate_envelope(env)
        assert env["data"]["revision"] == 1
    # Polling again over the same (overlapping) windows creates nothing new.
    await rig.poll()
    await rig.poll()
    await rig.settle()
    assert len(rec.envelopes) == 400
    assert rig.bridge.store is not None
    assert await rig.bridge.store.count_notifications("event.created") == 400
    assert (await rig.counts())["hook"].get("pending", 0) == 0


async def test_tickets_appearing_during_paging_give_no_duplicate_and_no_gap(
    make_rig: Any,
) -> None:
    rec = Receiver()
    # Every run reads the whole lookback window here, so inserts land inside the scan.
    rig: Rig = await make_rig({"hook": rec}, backlog=50, head_lookback_s=900)
    await wait_for(lambda: len(rec.envelopes) >= 50)
    # Insert events while a poll pages through its window: every insert shifts the
    # offsets of the items after it, which is how real paging loses or repeats items.
    rig.clock.advance(30)
    poll = asyncio.ensure_future(rig.poll())
    added, seen = 0, len(rig.sim.requests)
    while not poll.done() and added < 60:
        # Two new events (at earlier and later positions) after every page request.
        await wait_for(lambda n=seen: poll.done() or len(rig.sim.requests) > n)
        seen = len(rig.sim.requests)
        for _ in range(2):
            rig.sim.add_event(timestamp=int(rig.clock.now()) - 600 + (added * 97) % 600)
            added += 1
    await poll
    assert added >= 2
    await rig.poll()
    expected = visible_tickets(rig.sim)
    await wait_for(lambda: len(rec.envelopes) >= len(expected), message="all tickets")
    await rig.settle()
    assert rec.tickets() == {t: 1 for t in expected}


async def test_late_event_inside_lookback_is_delivered(make_rig: Any) -> None:
    rec = Receiver()
    rig: Rig = await make_rig({"hook": rec}, backlog=10, rescan_interval_s=150)
    await wait_for(lambda: len(rec.envelopes) == 10)
    rig.clock.advance(120)
    await rig.poll()  # the cursor is now past the late event's timestamp
    late = rig.sim.add_event(timestamp=int(rig.clock.now()) - 700)
    # Older than the head of the list: the re-scan of lookback_s finds it, which
    # starts every rescan_interval_s.
    rig.clock.advance(30)
    await rig.poll()
    await wait_for(lambda: late["ticket"] in rec.tickets(), message="late event")
    assert rec.tickets()[late["ticket"]] == 1


async def test_media_change_yields_exactly_one_update_with_revision_2(make_rig: Any) -> None:
    rec = Receiver()
    rig: Rig = await make_rig({"hook": rec})
    item = rig.sim.add_event(video=True, media_delay_s=10_000)
    rig.clock.advance(5)
    await rig.poll()
    await wait_for(lambda: item["ticket"] in rec.tickets())
    created = rec.of_type("event.created")[0]
    assert created["data"]["media"]["has_video"] is False
    rig.sim.set_media(item["ticket"], has_video=True)
    rig.clock.advance(5)
    await rig.poll()
    await rig.poll()
    await wait_for(lambda: len(rec.of_type("event.updated")) >= 1)
    await rig.settle()
    updates = rec.of_type("event.updated")
    assert len(updates) == 1
    data = updates[0]["data"]
    assert data["ticket"] == item["ticket"]
    assert data["revision"] == 2
    assert "media.has_video" in data["changed"]
    assert data["media"]["has_video"] is True
    validate_envelope(updates[0])


async def test_receiver_failing_503_twice_then_ok_gets_everything(make_rig: Any) -> None:
    rec = Receiver(behaviour=fail_first(2, 503))
    rig: Rig = await make_rig({"hook": rec}, backlog=30)
    await rig.advance_until(lambda: len(rec.envelopes) >= 30)
    await rig.settle()
    assert rec.requests == 32
    assert set(rec.tickets().values()) == {1}
    assert (await rig.counts())["hook"].get("dead", 0) == 0


async def test_permanent_400_goes_dead_without_delaying_healthy_or_slow_targets(
    make_rig: Any, aiohttp_server: ServerFactory
) -> None:
    good, bad = Receiver(), Receiver(behaviour=always(400))
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    slow_app = web.Application()
    slow_app.router.add_post("/hook", hang)
    slow = await aiohttp_server(slow_app)
    hanging = webhook("slow", str(slow.make_url("/hook")), timeout_s=60)
    rig: Rig = await make_rig({"good": good, "bad": bad}, backlog=60, extra_targets=[hanging])
    try:
        # A third target that never answers must not hold the others back either.
        await wait_for(lambda: len(good.envelopes) == 60, message="healthy target got all")
        await wait_for(lambda: bad.requests == 60, message="bad target tried once each")
        await rig.settle("bad")
        counts = await rig.counts()
        assert counts["bad"]["dead"] == 60
        assert counts["good"].get("pending", 0) == 0
        # The slow target is stuck on its first batch the whole time.
        assert counts["slow"]["in_flight"] >= 8
        assert counts["slow"].get("dead", 0) == 0
    finally:
        release.set()


async def test_410_pauses_target_until_resumed(make_rig: Any) -> None:
    rec = Receiver(behaviour=always(410))
    rig: Rig = await make_rig({"hook": rec}, backlog=20)
    dispatcher = rig.bridge.dispatchers["hook"]
    await wait_for(lambda: dispatcher.paused, message="paused")
    await rig.settle()
    tried = rec.requests
    assert 1 <= tried <= 8  # at most the in-flight batch, then nothing
    rig.clock.advance(60)
    await asyncio.sleep(0.05)
    assert rec.requests == tried
    assert (await rig.counts())["hook"]["pending"] == 20
    metric = rig.bridge.metrics.target_paused.labels(target="hook")._value.get()
    assert metric == 1
    rec.behaviour = always(200)
    assert await dispatcher.resume()
    await wait_for(lambda: len(rec.envelopes) == 20, message="flow after resume")
    assert set(rec.tickets().values()) == {1}


async def test_fifo_target_delivers_in_creation_order_despite_a_failing_head(
    make_rig: Any,
) -> None:
    rec = Receiver(behaviour=fail_first(1, 500))
    rig: Rig = await make_rig(
        {"hook": rec}, backlog=25, target_extra={"hook": {"max_in_flight": 1}}
    )
    await rig.advance_until(lambda: len(rec.envelopes) == 25)
    await rig.settle("hook")  # the last outcome is stored after the receiver has it
    assert rig.bridge.store is not None
    rows, _ = await rig.bridge.store.list_deliveries(target="hook", limit=100)
    creation_order = [r.notification_id for r in reversed(rows)]
    assert [e["id"] for e in rec.envelopes] == creation_order
    assert all(r.state is DeliveryState.DELIVERED for r in rows)


async def test_malformed_item_is_logged_once_counted_and_skipped(make_rig: Any) -> None:
    rec = Receiver()
    rig: Rig = await make_rig({"hook": rec}, backlog=5)
    await wait_for(lambda: len(rec.envelopes) == 5)
    rig.sim.add_event(ticket=None)
    good = rig.sim.add_event()
    rig.clock.advance(5)
    with capture_logs() as logs:
        await rig.poll()
        await rig.poll()
    await wait_for(lambda: good["ticket"] in rec.tickets())
    skipped = [entry for entry in logs if entry["event"] == "skipped malformed upstream item"]
    assert len(skipped) == 1
    metric = rig.bridge.metrics.items_malformed.labels(job="events")._value.get()
    assert metric >= 2  # counted every time it is fetched, logged once


async def test_prune_job_removes_finished_rows_past_retention(make_rig: Any) -> None:
    rec = Receiver()
    rig: Rig = await make_rig({"hook": rec}, backlog=20)
    await wait_for(lambda: len(rec.envelopes) == 20)
    await rig.settle()
    store = rig.bridge.store
    assert store is not None
    assert rig.bridge.scheduler is not None
    await rig.bridge.scheduler.run_now("prune")
    assert await store.count_notifications() == 20  # still inside retention
    rig.clock.advance(15 * 86400)  # past the default 14 days
    await rig.bridge.scheduler.run_now("prune")
    assert await store.count_notifications() == 0
