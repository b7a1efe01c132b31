"""Storm control end to end through a dispatcher (SPEC §6.5), on SQLite AND PostgreSQL.

A real webhook receiver verifies every delivery; the dispatcher runs on a FakeClock
so intervals and quiet hours pass only when a test moves it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from conftest import wait_for
from envelope_schema import validate_envelope
from test_slack_target import FakeSlack, bot_cfg, send, session, slack, store  # noqa: F401
from test_store_contract import make_store  # noqa: F401 - the store fixture (both stores)
from webhook_receiver import Receiver

from bridge import storm
from bridge.clock import FakeClock, utc_iso
from bridge.dispatch import Dispatcher, dispatch_options
from bridge.metrics import Metrics
from bridge.notifications import Notification, build_notification
from bridge.settings import WebhookTarget
from bridge.store.base import DeliveryState, IngestTx, NewNotification, Store
from bridge.targets.slack import SlackSender
from bridge.targets.webhook import WebhookSender

ServerFactory = Callable[..., Awaitable[TestServer]]
StoreFactory = Callable[[], Awaitable[Store]]
T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z, the fake clock's start


def event(
    vehicle: int, at: float, *, severity: str = "minor", name: str = "LDW", n: int = 0
) -> Notification:
    data = {
        "ticket": f"tk-{vehicle}-{at}-{n}",
        "revision": 1,
        "changed": [],
        "event_type": {"code": 13, "name": name, "category": "adas"},
        "severity": severity,
        "occurred_at": utc_iso(at),
        "vehicle": {"id": vehicle},
        "driver": {"id": 7, "name": "Jane Doe"},
    }
    return build_notification("event.created", data, base_url="https://fleet.example", now=at)


@dataclass
class Rig:
    store: Store
    clock: FakeClock
    receiver: Receiver
    dispatcher: Dispatcher
    metrics: Metrics

    async def put(self, *notes: Notification) -> None:
        async def fn(tx: IngestTx) -> None:
            await tx.add_notifications([NewNotification(n, ["hook"]) for n in notes])

        await self.store.ingest(fn)

    async def states(self, state: DeliveryState) -> int:
        rows, _ = await self.store.list_deliveries(state=state, target="hook", limit=1000)
        return len(rows)

    async def has(self, state: DeliveryState, count: int) -> bool:
        return await self.states(state) == count

    async def settle(self) -> None:
        """Outcomes are written under the claim's expiry: store them before time jumps."""
        await self.dispatcher.wait_idle()

    async def look_at(self, seconds: float) -> None:
        """Move the clock and wait until the dispatcher has looked at the new time.

        Its feeder sleeps at most 2 s of clock time, so the move ends every sleep; once
        it sleeps again, it has flushed storm control at the new time.
        """
        self.clock.advance(seconds)
        await wait_for(lambda: self.clock.sleepers >= 1, message="the dispatcher asleep again")

    def counted(self, outcome: str) -> float:
        value = self.metrics.deliveries.labels(target="hook", outcome=outcome)._value.get()
        return float(value)


@pytest.fixture
async def rig_factory(
    make_store: StoreFactory,  # noqa: F811
    aiohttp_server: ServerFactory,
    fake_clock: FakeClock,
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    client = aiohttp.ClientSession()
    dispatchers: list[Dispatcher] = []
    stopped: set[Dispatcher] = STOPPED

    async def build(**storm: Any) -> Rig:
        receiver = Receiver()
        server = await aiohttp_server(receiver.app())
        cfg = WebhookTarget.model_validate(
            {
                "name": "hook",
                "type": "webhook",
                "url": str(server.make_url("/hook")),
                "secret": receiver.secret,
                **storm,
            }
        )
        opened = await make_store()
        metrics = Metrics()
        # Signatures carry the real time (the receiver checks it); the queue runs on
        # the fake clock.
        sender = WebhookSender(cfg)
        dispatcher = Dispatcher(dispatch_options(cfg), sender, opened, fake_clock, metrics)
        await dispatcher.start()
        dispatchers.append(dispatcher)
        return Rig(opened, fake_clock, receiver, dispatcher, metrics)

    yield build
    for d in dispatchers:
        if d not in stopped:
            await d.stop(5)
    await client.close()


STOPPED: set[Dispatcher] = set()  # stopped by a test itself (not again at teardown)
GROUP = {"group": {"by": ["vehicle.id"], "interval_s": 300, "max_items": 4}}


async def test_first_event_goes_at_once_the_next_six_as_one_group(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(**GROUP)
    first = event(1, T0)
    await rig.put(first)
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="the first event")
    assert rig.receiver.envelopes[0]["id"] == first.id

    later = [event(1, T0 + 10 + i, n=i, severity="severe" if i == 0 else "minor") for i in range(6)]
    other = event(2, T0 + 12)
    await rig.put(*later, other)
    # Another vehicle is not delayed; vehicle 1's six wait as `grouped`.
    await wait_for(lambda: len(rig.receiver.envelopes) == 2, message="the other vehicle")
    assert rig.receiver.envelopes[1]["id"] == other.id
    # Counted once the parking transaction has committed: wait for the count.
    await wait_for(lambda: rig.counted("grouped") == 6, message="six grouped")
    assert await rig.has(DeliveryState.GROUPED, 6)

    await rig.settle()
    rig.clock.advance(299)
    await rig.dispatcher.wait_idle()
    assert len(rig.receiver.envelopes) == 2  # the interval has not passed yet
    await rig.settle()
    rig.clock.advance(2)
    await wait_for(lambda: len(rig.receiver.envelopes) == 3, message="the group")
    group = rig.receiver.envelopes[2]
    validate_envelope(group)
    assert group["type"] == "event.group"
    data = group["data"]
    assert data["reason"] == "grouped"
    assert data["key"] == {"vehicle.id": 1}
    assert data["count"] == 6
    assert data["truncated"] == 2  # max_items 4
    assert [i["notification_id"] for i in data["items"]] == [n.id for n in later[:4]]
    assert data["items"][0]["data"] == later[0].data  # full data
    assert data["by_severity"] == {"severe": 1, "minor": 5}
    assert data["by_event_type"] == {"LDW": 6}
    assert data["first_occurred_at"] == utc_iso(T0 + 10)
    assert data["last_occurred_at"] == utc_iso(T0 + 15)
    # Members stay `grouped` (listable); the group itself was delivered.
    assert await rig.states(DeliveryState.GROUPED) == 6
    await rig.settle()
    rig.clock.advance(1000)
    await rig.dispatcher.wait_idle()
    assert len(rig.receiver.envelopes) == 3  # never sent twice


async def test_a_lone_member_after_the_interval_goes_as_itself(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(**GROUP)
    await rig.put(event(1, T0))
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="first")
    lone = event(1, T0 + 5)
    await rig.put(lone)
    await wait_for(lambda: rig.has(DeliveryState.GROUPED, 1), message="parked")
    await rig.settle()
    rig.clock.advance(301)
    await wait_for(lambda: len(rig.receiver.envelopes) == 2, message="the lone member")
    assert rig.receiver.envelopes[1]["id"] == lone.id
    assert rig.receiver.envelopes[1]["type"] == "event.created"
    # The group ended after interval_s without members: the next one goes at once.
    await rig.settle()
    rig.clock.advance(400)
    fresh = event(1, T0 + 800)
    await rig.put(fresh)
    await wait_for(lambda: len(rig.receiver.envelopes) == 3, message="a new group's first")
    assert rig.receiver.envelopes[2]["id"] == fresh.id


INHIBIT = {
    "inhibit": [
        {
            "when": {"min_severity": "severe"},
            "suppress": {"max_severity": "moderate"},
            "equal": ["vehicle.id"],
            "window_s": 120,
        }
    ]
}


async def test_a_minor_event_next_to_a_severe_one_is_suppressed_and_replayable(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(**INHIBIT)
    severe = event(1, T0, severity="severe", name="Impact")
    await rig.put(severe)
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="severe")
    minor_same = event(1, T0 + 30)
    minor_other = event(2, T0 + 30)
    minor_late = event(1, T0 + 500)  # outside window_s
    await rig.put(minor_same, minor_other, minor_late)
    await wait_for(lambda: len(rig.receiver.envelopes) == 3, message="the others")
    ids = [e["id"] for e in rig.receiver.envelopes]
    assert ids == [severe.id, minor_other.id, minor_late.id]
    suppressed, _ = await rig.store.list_deliveries(state=DeliveryState.SUPPRESSED)
    assert [r.notification_id for r in suppressed] == [minor_same.id]
    assert rig.counted("suppressed") == 1
    # Replayable: an operator's retry sends it, and storm control lets it through.
    assert await rig.store.retry_delivery(suppressed[0].id, rig.clock.now())
    await wait_for(lambda: len(rig.receiver.envelopes) == 4, message="the replayed one")
    assert rig.receiver.envelopes[3]["id"] == minor_same.id


MUTE = {"mute": [{"tz": "America/Chicago", "from": "22:00", "to": "06:00"}]}


async def test_a_mute_window_holds_then_releases_one_digest(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(**MUTE)
    # T0 is 10:00 in Chicago; 23:00 there is 13 h later.
    await rig.settle()
    rig.clock.advance(13 * 3600)
    now = rig.clock.now()
    held = [event(v, now + i, n=i) for i, v in enumerate((1, 2, 1))]
    await rig.put(*held)
    await wait_for(lambda: rig.counted("held") == 3, message="held")
    assert await rig.has(DeliveryState.HELD, 3)
    assert rig.receiver.envelopes == []
    await rig.settle()
    await rig.look_at(6.5 * 3600)  # 05:30: still quiet
    await rig.dispatcher.wait_idle()
    assert rig.receiver.envelopes == []
    await rig.settle()
    rig.clock.advance(1800 + 10)  # 06:00:10
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="the digest")
    digest = rig.receiver.envelopes[0]
    validate_envelope(digest)
    assert digest["type"] == "event.group"
    assert digest["data"]["reason"] == "muted"
    assert digest["data"]["count"] == 3
    assert digest["data"]["key"] == {}
    assert [i["notification_id"] for i in digest["data"]["items"]] == [n.id for n in held]
    await rig.settle()
    await rig.look_at(3600)
    await rig.dispatcher.wait_idle()
    assert len(rig.receiver.envelopes) == 1


async def test_slack_follow_ups_of_a_grouped_ticket_go_into_the_groups_thread(
    slack: tuple[FakeSlack, TestServer],  # noqa: F811
    session: aiohttp.ClientSession,  # noqa: F811
    store: Store,  # noqa: F811
) -> None:
    fake, server = slack
    sender = SlackSender(bot_cfg(server), session, store=store)
    alone = event(1, T0)
    members = [event(1, T0 + 10 + i, n=i) for i in range(3)]
    data = storm.group_data("grouped", {"vehicle.id": 1}, members, max_items=20)
    group = build_notification("event.group", data, base_url="https://fleet.example", now=T0)
    assert (await send(sender, alone)).ok  # posted alone earlier: its own thread
    assert (await send(sender, group)).ok
    follow_ups = [
        build_notification(
            "event.updated",
            m.data | {"revision": 2, "changed": ["media.has_video"]},
            base_url="https://fleet.example",
            now=T0 + 60,
        )
        for m in (members[1], alone)
    ]
    for n in follow_ups:
        assert (await send(sender, n)).ok
    first, posted_group, member_update, alone_update = fake.hits
    assert "thread_ts" not in posted_group.body
    assert member_update.body["thread_ts"] == posted_group.ts
    assert alone_update.body["thread_ts"] == first.ts


async def test_with_wait_s_a_minor_event_just_before_the_severe_one_is_suppressed_too(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    group = {"by": ["vehicle.id"], "wait_s": 30, "interval_s": 300}
    rig = await rig_factory(group=group, **INHIBIT)
    minor = event(1, T0)
    await rig.put(minor)
    await wait_for(lambda: rig.has(DeliveryState.GROUPED, 1), message="waits for company")
    severe = event(1, T0 + 5, severity="severe", name="Impact")
    await rig.put(severe)
    await wait_for(lambda: rig.has(DeliveryState.GROUPED, 2), message="both wait")
    await rig.settle()
    rig.clock.advance(31)
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="the severe one")
    # The minor one was checked again when the group went out: suppressed. The
    # severe one, alone now, went as itself.
    assert rig.receiver.envelopes[0]["id"] == severe.id
    suppressed, _ = await rig.store.list_deliveries(state=DeliveryState.SUPPRESSED)
    assert [r.notification_id for r in suppressed] == [minor.id]


async def test_held_deliveries_of_a_grouping_target_go_out_one_digest_per_key(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(**GROUP, **MUTE)
    rig.clock.advance(13 * 3600)  # 23:00 in Chicago
    now = rig.clock.now()
    held = [event(v, now + i, n=i) for i, v in enumerate((1, 2, 1, 2, 2))]
    await rig.put(*held)
    await wait_for(lambda: rig.has(DeliveryState.HELD, 5), message="held")
    await rig.settle()
    rig.clock.advance(7 * 3600 + 10)  # 06:00:10
    await wait_for(lambda: len(rig.receiver.envelopes) == 2, message="two digests")
    digests = {e["data"]["key"]["vehicle.id"]: e["data"] for e in rig.receiver.envelopes}
    assert {k: d["count"] for k, d in digests.items()} == {1: 2, 2: 3}
    assert {d["reason"] for d in digests.values()} == {"muted"}


async def test_parked_rows_go_out_after_storm_control_is_removed_from_the_target(
    rig_factory: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_factory(**GROUP, **MUTE)
    await rig.put(event(1, T0))
    await wait_for(lambda: len(rig.receiver.envelopes) == 1, message="first")
    waiting = [event(1, T0 + 5), event(1, T0 + 6)]
    await rig.put(*waiting)
    await wait_for(lambda: rig.has(DeliveryState.GROUPED, 2), message="grouped")
    await rig.settle()
    await rig.dispatcher.stop(5)
    STOPPED.add(rig.dispatcher)
    # Restarted without `group` and `mute`: what waited goes out at once, as a group.
    plain = await rig_factory()
    await wait_for(lambda: len(plain.receiver.envelopes) == 1, message="the leftover group")
    data = plain.receiver.envelopes[0]["data"]
    assert (data["count"], data["reason"]) == (2, "grouped")
    assert [i["notification_id"] for i in data["items"]] == [n.id for n in waiting]
