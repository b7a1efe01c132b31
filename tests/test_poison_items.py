"""One bad vendor string must not stop the bridge (issue: poison items).

A lone surrogate (`"\\ud800"`, valid JSON) used to make every later poll fail with
`UnicodeEncodeError`, keep a clip task from ever being tracked again and make the push
worker drop its whole batch. The vendor's text is now cleaned once at the boundary,
and a batch the store still refuses goes in item by item, skipping only the culprit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import Rig, make_rig
from conftest import wait_for
from structlog.testing import capture_logs
from test_push import PUSH_CONFIG, drained, event_push, push

from bridge.clock import FakeClock, utc_iso
from bridge.ingest import EventIngestor
from bridge.metrics import Metrics
from bridge.settings import settings_from_dict
from bridge.simulator import push as sim_push
from bridge.store.base import IngestTx, StoreRejected
from bridge.store.sqlite import SqliteStore

RigFactory = Callable[..., Awaitable[Rig]]
POISON = "\ud800"


@pytest.fixture
def rig_factory(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> RigFactory:
    async def factory(**kw: Any) -> Rig:
        return await make_rig(aiohttp_server, aiohttp_client, tmp_path, **kw)

    return factory


def malformed_count(rig: Rig, job: str) -> float:
    value = rig.bridge.metrics.items_malformed.labels(job=job)._value.get()
    return float(value)


async def test_a_lone_surrogate_in_a_page_does_not_stop_the_poller(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    now = int(rig.clock.now())
    before = rig.sim.add_event(timestamp=now - 30, video=False)
    bad = rig.sim.add_event(timestamp=now - 20, video=False, driver_name=f"Jo{POISON}e\u202e")
    after = rig.sim.add_event(timestamp=now - 10, video=False)
    rig.clock.advance(1)

    stats = await rig.run("events")

    assert stats is not None, "the poll failed"
    assert stats.created == 3
    await wait_for(lambda: len(rig.receiver.of_type("event.created")) == 3)
    by_ticket = {e["data"]["ticket"]: e for e in rig.receiver.of_type("event.created")}
    assert set(by_ticket) == {before["ticket"], bad["ticket"], after["ticket"]}
    # The surrogate became U+FFFD, the bidi override was dropped.
    assert by_ticket[bad["ticket"]]["data"]["driver"]["name"] == "Jo\ufffde"
    poller = rig.bridge.events_poller
    assert poller is not None
    assert not poller.status.failing
    assert poller.status.cursor is not None
    assert poller.status.cursor >= now
    later = rig.sim.add_event(timestamp=now + 5, video=False)
    rig.clock.advance(10)
    stats = await rig.run("events")
    assert stats is not None
    assert stats.created == 1
    await wait_for(lambda: later["ticket"] in rig.receiver.tickets())
    resp = await rig.client.get("/readyz")
    assert resp.status == 200
    rig.assert_all_valid()


async def test_a_clip_task_with_a_lone_surrogate_is_tracked_with_the_others(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory()
    body = {
        "cam_id": "C_F",
        "target_timestamp": utc_iso(rig.clock.now() - 120),
        "duration_s": 30,
        "file_name": "incident-1",
    }
    ids = []
    for device in rig.sim.devices[:2]:
        resp = await rig.post_clip({**body, "serial_number": device.serial_number})
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["task_id"])
    # The vendor reports a camera of the first task under a name holding a surrogate.
    rig.sim.tasks[ids[0]].cameras = (f"C_F{POISON}",)

    for _ in range(10):
        rig.clock.advance(5)
        await rig.run("clips")
    for task_id in ids:
        resp = await rig.client.get(f"/api/v1/clips/{task_id}", headers=rig.auth)
        view = await resp.json()
        assert view["done"] is True, view
    poisoned = await (await rig.client.get(f"/api/v1/clips/{ids[0]}", headers=rig.auth)).json()
    assert [c["cam_id"] for c in poisoned["cameras"]] == ["C_F\ufffd"]
    await rig.settle()
    finals = [e for e in rig.receiver.envelopes if e["type"] in ("clip.completed", "clip.failed")]
    assert sorted(e["data"]["task_id"] for e in finals) == sorted(ids)
    assert not rig.bridge.clips._locks
    rig.assert_all_valid()


async def test_22_valid_pushes_around_a_bad_one_are_all_stored(rig_factory: RigFactory) -> None:
    rig = await rig_factory(config=PUSH_CONFIG)
    bodies = []
    for i in range(23):
        ticket, body = event_push(rig, video=False)
        if i == 11:
            message = json.loads(body["message"])
            message["device_sn"] = f"Bad{POISON}\x01name"
            body = {**body, "message": json.dumps(message)}
            bad_ticket = ticket
        bodies.append((ticket, body))
    rig.clock.advance(1)
    answers = await asyncio.gather(*(push(rig, body) for _, body in bodies))
    assert [a.status for a in answers] == [200] * 23
    await drained(rig)
    store = rig.bridge.store
    assert store is not None
    assert await store.count_notifications("event.created") == 23
    await wait_for(lambda: len(rig.receiver.of_type("event.created")) == 23)
    tickets = rig.receiver.tickets()
    assert all(tickets[t] == 1 for t, _ in bodies)
    (bad,) = [e for e in rig.receiver.of_type("event.created") if e["data"]["ticket"] == bad_ticket]
    assert bad["data"]["device"]["serial_number"] == "Bad\ufffdname"
    rig.assert_all_valid()


async def test_a_task_update_push_for_a_poisoned_task_does_not_stop_the_rest(
    rig_factory: RigFactory,
) -> None:
    rig = await rig_factory(config=PUSH_CONFIG)
    resp = await rig.post_clip(
        {
            "serial_number": rig.sim.devices[0].serial_number,
            "cam_id": "C_F",
            "target_timestamp": utc_iso(rig.clock.now() - 120),
            "file_name": "incident-2",
        }
    )
    task_id = (await resp.json())["task_id"]
    task = rig.sim.tasks[task_id]
    task.cameras = (f"C_F{POISON}",)
    rig.clock.advance(30)
    ticket, event = event_push(rig, video=False)
    update = sim_push.task_update(rig.sim, task, rig.clock.now())
    for body in (update, event):
        assert (await push(rig, body)).status == 200
    await drained(rig)
    await wait_for(lambda: ticket in rig.receiver.tickets())
    view = await (await rig.client.get(f"/api/v1/clips/{task_id}", headers=rig.auth)).json()
    assert view["done"] is True


# -- the second line: a batch the store refuses goes in item by item ---------------------


async def test_an_item_the_store_refuses_is_skipped_once_and_the_rest_stored(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    settings = settings_from_dict(
        {
            "upstream": {
                "base_url": "https://fleet.example.com",
                "api_key": "k" * 16,
                "auth": {"token": "t" * 16},
            },
            "targets": [{"name": "out", "type": "console"}],
        },
        {},
    )
    store = SqliteStore(tmp_path / "b.db", fake_clock)
    await store.open()
    metrics = Metrics()
    ingestor = EventIngestor(settings, store, fake_clock, metrics)
    items = [
        {"ticket": "t-1", "timestamp": 1_764_000_000},
        # Not through the boundary (a future reader might skip it): SQLite refuses it.
        {"ticket": "t-2", "timestamp": 1_764_000_001, "driver_name": POISON},
        {"ticket": "t-3", "timestamp": 1_764_000_002},
    ]

    async def refuses(tx: IngestTx) -> None:
        await tx.put_json("probe", "k", {"v": POISON})

    with pytest.raises(StoreRejected):  # an encoding error is a store error
        await store.ingest(refuses)
    try:
        with capture_logs() as logs:
            stats = await ingestor.ingest(items, job="events", cursor=1_764_000_002.0)
            again = await ingestor.ingest(items, job="events", cursor=1_764_000_002.0)
        assert (stats.created, stats.malformed) == (2, 1)
        assert (again.duplicates, again.malformed) == (2, 1)
        assert await store.count_notifications("event.created") == 2
        assert await store.get_cursor("events") == 1_764_000_002.0
        skipped = [e for e in logs if e["event"] == "skipped malformed upstream item"]
        assert len(skipped) == 1  # logged once, counted twice
        assert skipped[0]["ticket"] == "t-2"
        assert metrics.items_malformed.labels(job="events")._value.get() == 2
    finally:
        await store.close()
