"""Fresh deliveries handed straight to the local dispatcher, already claimed (SQLite).

Ingest inserts a target's new delivery rows `in_flight` under a claim its dispatcher
reserved, and hands the rows over after commit, so the dispatcher never reads them
back with a claim query. The rows stay the durable record: outcomes and give-backs
go through the same claim token, a failed or re-run transaction frees the room, and
targets that must see their rows claimed first (FIFO, storm control, paused) get none.

A real SQLite store, a real webhook receiver, the real ingestor and dispatcher.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from conftest import wait_for
from webhook_receiver import SECRET, Receiver

from bridge.clock import FakeClock
from bridge.dispatch import Dispatcher, Reservation, dispatch_options
from bridge.ingest import EventIngestor
from bridge.metrics import Metrics
from bridge.notifications import build_notification
from bridge.settings import settings_from_dict
from bridge.store.base import (
    Delivery,
    DeliveryState,
    IngestTx,
    NewNotification,
    StoreUnavailable,
    TicketConflict,
)
from bridge.store.sqlite import SqliteStore
from bridge.targets.webhook import WebhookSender

ServerFactory = Callable[..., Awaitable[TestServer]]
T0 = 1_764_000_000


class ClaimCountingStore(SqliteStore):
    """The SQLite store, counting the rows its claims return."""

    claimed = 0

    async def claim(
        self,
        target: str,
        now: float,
        limit: int,
        *,
        fifo: bool,
        max_in_flight: int | None = None,
    ) -> list[Delivery]:
        rows = await super().claim(target, now, limit, fifo=fifo, max_in_flight=max_in_flight)
        self.claimed += len(rows)
        return rows


@dataclass
class Rig:
    clock: FakeClock
    store: ClaimCountingStore
    receiver: Receiver
    dispatcher: Dispatcher
    ingestor: EventIngestor

    async def rows(self) -> dict[str, int]:
        records, _ = await self.store.list_deliveries(target="hook", limit=1000)
        out: dict[str, int] = {}
        for r in records:
            out[r.state.value] = out.get(r.state.value, 0) + 1
        return out

    async def idle(self) -> None:
        await wait_for(lambda: self.dispatcher.in_progress == 0, message="nothing in progress")
        await self.dispatcher.wait_idle()


def item(i: int) -> dict[str, Any]:
    return {
        "ticket": f"t-{i}",
        "timestamp": T0,
        "type": 3,
        "device_cid": "cid-1",
        "asset_info": {"has_video": False, "uploading": False},
        "videos_count": 0,
        "videos_total_count": 0,
    }


@contextlib.asynccontextmanager
async def running(
    aiohttp_server: ServerFactory,
    tmp_path: Path,
    *,
    behaviour: Callable[[int], tuple[int, dict[str, str]]] | None = None,
    paused: bool = False,
    **target: Any,
) -> AsyncIterator[Rig]:
    clock = FakeClock(start=time.time())
    receiver = Receiver() if behaviour is None else Receiver(behaviour=behaviour)
    server = await aiohttp_server(receiver.app())
    settings = settings_from_dict(
        {
            "upstream": {
                "base_url": "https://fleet.example.com",
                "api_key": "k" * 16,
                "auth": {"token": "t" * 16},
            },
            "targets": [
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": str(server.make_url("/hook")),
                    "secret": SECRET,
                    **target,
                }
            ],
        },
        {},
    )
    cfg = settings.targets[0]
    store = ClaimCountingStore(tmp_path / "bridge.db", clock)
    await store.open()
    if paused:
        await store.pause_target("hook", "by the test")
    sender = WebhookSender(cfg, clock=clock)
    dispatcher = Dispatcher(dispatch_options(cfg), sender, store, clock, Metrics())

    def reserve(name: str, n: int) -> Reservation | None:
        return dispatcher.reserve(n) if name == "hook" else None

    ingestor = EventIngestor(settings, store, clock, Metrics(), reserve=reserve)
    await dispatcher.start()
    try:
        yield Rig(clock, store, receiver, dispatcher, ingestor)
    finally:
        await dispatcher.stop(5)
        await store.close()


async def test_fresh_notifications_are_sent_without_a_claim(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with running(aiohttp_server, tmp_path) as rig:
        stats = await rig.ingestor.ingest([item(i) for i in range(20)], job="events")
        assert stats.created == 20
        await wait_for(lambda: len(rig.receiver.envelopes) == 20, message="all sent")
        await rig.idle()
        assert rig.store.claimed == 0  # every row came from the ingest, none from a claim
        assert await rig.rows() == {"delivered": 20}
        assert sorted(e["data"]["ticket"] for e in rig.receiver.envelopes) == sorted(
            f"t-{i}" for i in range(20)
        )


async def test_rows_beyond_the_queue_room_stay_pending_and_are_claimed(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # max_in_flight 8: a queue of 32; the other rows of a 100-item page are claimed.
    async with running(aiohttp_server, tmp_path, max_in_flight=8) as rig:
        await rig.ingestor.ingest([item(i) for i in range(100)], job="events")
        await wait_for(lambda: len(rig.receiver.envelopes) == 100, message="all sent")
        await rig.idle()
        assert 0 < rig.store.claimed <= 100 - 32
        assert await rig.rows() == {"delivered": 100}
        assert len({e["id"] for e in rig.receiver.envelopes}) == 100  # each once


async def test_the_hand_off_is_the_durable_row_in_flight_under_the_dispatchers_claim(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with running(aiohttp_server, tmp_path) as rig:
        reservation = rig.dispatcher.reserve(3)
        assert reservation is not None
        assert reservation.limit == 3
        assert rig.dispatcher.in_progress == 3  # counted before any row exists
        notes = [
            build_notification("event.created", {"ticket": f"t-{i}"}, base_url="x", now=T0)
            for i in range(5)
        ]
        handed: list[Delivery] = []

        async def work(tx: IngestTx) -> None:
            handed[:] = await tx.add_notifications(
                [NewNotification(n, ["hook"]) for n in notes],
                claims={"hook": reservation.hand_off},
            )

        await rig.store.ingest(work)
        assert [d.notification_id for d in handed] == [n.id for n in notes[:3]]
        assert all(d.claim == reservation.token for d in handed)
        assert await rig.rows() == {"in_flight": 3, "pending": 2}
        reservation.accept(handed)
        reservation.accept(handed)  # settles once
        await wait_for(lambda: len(rig.receiver.envelopes) == 5, message="all sent")
        await rig.idle()
        assert await rig.rows() == {"delivered": 5}
        assert rig.store.claimed == 2


async def test_paused_fifo_and_storm_targets_get_no_hand_off(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with running(aiohttp_server, tmp_path / "p", paused=True) as rig:
        assert rig.dispatcher.reserve(1) is None
        await rig.ingestor.ingest([item(i) for i in range(3)], job="events")
        assert await rig.rows() == {"pending": 3}
        assert rig.dispatcher.in_progress == 0
    async with running(aiohttp_server, tmp_path / "f", max_in_flight=1) as rig:
        assert rig.dispatcher.reserve(1) is None
    mute = {"mute": [{"types": ["event.created"], "from": "00:00", "to": "00:01"}]}
    async with running(aiohttp_server, tmp_path / "s", **mute) as rig:
        assert rig.dispatcher.reserve(1) is None
    async with running(aiohttp_server, tmp_path / "h") as rig:  # plain: takes them
        reservation = rig.dispatcher.reserve(1)
        assert reservation is not None
        reservation.cancel()
        assert rig.dispatcher.in_progress == 0


async def test_a_failed_ingest_frees_the_reserved_room(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with running(aiohttp_server, tmp_path) as rig:

        async def fail(tx: IngestTx) -> None:
            raise StoreUnavailable("the disk went away")

        try:
            await rig.ingestor.ingest([item(i) for i in range(5)], job="events", also=fail)
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("the ingest should have failed")
        assert rig.dispatcher.in_progress == 0  # no phantom work
        await rig.dispatcher.wait_idle()  # returns
        assert await rig.rows() == {}
        await rig.ingestor.ingest([item(i) for i in range(5)], job="events")
        await wait_for(lambda: len(rig.receiver.envelopes) == 5, message="all sent")
        await rig.idle()
        assert rig.store.claimed == 0


async def test_a_re_run_ingest_hands_off_once(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    async with running(aiohttp_server, tmp_path) as rig:
        runs = 0

        async def conflict_once(tx: IngestTx) -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise TicketConflict("another writer moved a ticket")

        await rig.ingestor.ingest([item(i) for i in range(5)], job="events", also=conflict_once)
        assert runs == 2
        await wait_for(lambda: len(rig.receiver.envelopes) == 5, message="all sent")
        await rig.idle()
        assert rig.dispatcher.in_progress == 0
        assert rig.store.claimed == 0
        assert await rig.rows() == {"delivered": 5}


async def test_handed_off_rows_are_given_back_when_the_target_pauses(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    gone = {"on": True}

    def behaviour(n: int) -> tuple[int, dict[str, str]]:
        return (410, {}) if gone["on"] else (200, {})

    async with running(aiohttp_server, tmp_path, behaviour=behaviour, max_in_flight=2) as rig:
        await rig.ingestor.ingest([item(i) for i in range(10)], job="events")
        await wait_for(lambda: rig.dispatcher.paused, message="paused by the 410")
        await rig.idle()
        # Handed-off rows not yet sent went back under their claim, no attempt spent.
        assert await rig.rows() == {"pending": 10}
        records, _ = await rig.store.list_deliveries(target="hook", limit=100)
        assert sum(r.attempts for r in records) == rig.receiver.requests
        assert all(r.state is DeliveryState.PENDING for r in records)
        assert rig.store.claimed == 0
        gone["on"] = False
        await rig.dispatcher.resume()
        await wait_for(lambda: len(rig.receiver.envelopes) == 10, message="all sent")
        await rig.idle()
        assert await rig.rows() == {"delivered": 10}
