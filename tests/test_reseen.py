"""Re-seen, unchanged poll items are skipped before normalizing (bridge/reseen.py).

The shortcut must never change what is notified: an item that changed in any way,
or whose ticket's stored state changed since it was last checked, takes the full
normalize → de-dup → store path.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from bridge_rig import ClientFactory, Rig, ServerFactory, make_rig
from hypothesis import given
from hypothesis import strategies as st

from bridge.clock import FakeClock
from bridge.dedup import VIDEOS_DUE
from bridge.ingest import EventIngestor
from bridge.metrics import Metrics
from bridge.normalize import normalize_push_event
from bridge.pollers import EventsPoller, poll_windows
from bridge.reseen import KnownPage, ReseenItems
from bridge.settings import settings_from_dict
from bridge.store.base import IngestTx, TicketWrite
from bridge.store.sqlite import SqliteStore
from bridge.upstream.envelope import page_digest

T0 = 1_764_000_000


def item(ticket: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ticket": ticket,
        "timestamp": T0,
        "type": 3,
        "device_cid": "cid-1",
        "asset_info": {"has_video": False, "uploading": False},
        "videos_count": 0,
        "videos_total_count": 0,
    }
    return {**base, **overrides}


@pytest.fixture
async def store(tmp_path: Path, fake_clock: FakeClock) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "b.db", fake_clock)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def ingestor(store: SqliteStore, fake_clock: FakeClock) -> EventIngestor:
    settings = settings_from_dict(
        {
            "upstream": {
                "base_url": "https://fleet.example.com",
                "api_key": "k" * 16,
                "auth": {"token": "t" * 16},
            },
            "poll": {"events": {"notify_updates": True}},
            "targets": [{"name": "out", "type": "console"}],
        },
        {},
    )
    return EventIngestor(settings, store, fake_clock, Metrics())


async def test_an_unchanged_item_is_skipped_once_the_store_found_it_unchanged(
    ingestor: EventIngestor,
) -> None:
    page = [item("t-1"), item("t-2")]
    first = await ingestor.ingest(page, job="events")
    assert first.created == 2
    assert len(ingestor.reseen) == 0  # created is a change: nothing remembered yet
    second = await ingestor.ingest(copy.deepcopy(page), job="events")
    assert (second.duplicates, second.created) == (2, 0)
    assert len(ingestor.reseen) == 2
    third = await ingestor.ingest(copy.deepcopy(page), job="events")
    assert (third.fetched, third.duplicates, third.created, third.updated) == (2, 2, 0, 0)


async def test_a_changed_item_takes_the_full_path_and_is_notified(
    ingestor: EventIngestor,
) -> None:
    await ingestor.ingest([item("t-1")], job="events")
    await ingestor.ingest([item("t-1")], job="events")
    assert len(ingestor.reseen) == 1
    # Only a media change makes an update; any other byte only skips the shortcut.
    renamed = await ingestor.ingest([item("t-1", driver_name="Jo")], job="events")
    assert (renamed.duplicates, renamed.updated) == (1, 0)
    changed = item("t-1", driver_name="Jo", videos_count=1, videos_total_count=1)
    stats = await ingestor.ingest([changed], job="events")
    assert stats.updated == 1
    assert stats.notifications[0].data["changed"] == [
        "media.videos_count",
        "media.videos_total_count",
    ]
    assert stats.notifications[0].data["revision"] == 2


async def test_a_push_that_changes_the_ticket_makes_the_next_poll_check_it_again(
    ingestor: EventIngestor,
) -> None:
    polled = item("t-1")
    await ingestor.ingest([polled], job="events")
    await ingestor.ingest([polled], job="events")
    assert len(ingestor.reseen) == 1
    # A vendor push says the event now has a clip; the poll list still says none.
    pushed = {"ticket": "t-1", "timestamp": T0, "event_type": 3, "video": {"count": 1}}
    stats = await ingestor.ingest([pushed], job="push", normalizer=normalize_push_event)
    assert stats.updated == 1
    assert len(ingestor.reseen) == 0
    # The identical poll item is judged against the pushed state, as without the shortcut.
    again = await ingestor.ingest([polled], job="events")
    assert again.updated == 1
    assert again.notifications[0].data["media"]["videos_count"] == 0


async def test_skipped_items_still_move_the_cursor(ingestor: EventIngestor) -> None:
    page = [item("t-1")]
    await ingestor.ingest(page, job="events")
    await ingestor.ingest(page, job="events")
    stats = await ingestor.ingest(page, job="events", cursor=float(T0 + 60))
    assert stats.duplicates == 1
    assert await ingestor.get_cursor("events") == float(T0 + 60)


def test_capacity_drops_the_oldest_entries_first() -> None:
    reseen = ReseenItems(capacity=2)
    pages = [item(f"t-{i}") for i in range(3)]
    _, fingerprints, skipped = reseen.split(pages)
    assert skipped == 0
    reseen.remember(fingerprints, ["t-0", "t-1", "t-2"])
    assert len(reseen) == 2
    fresh, _, skipped = reseen.split(pages)
    assert skipped == 2
    assert [i["ticket"] for i in fresh] == ["t-0"]


def test_items_without_a_fingerprint_always_take_the_full_path() -> None:
    reseen = ReseenItems()
    odd: list[Any] = [["not", "an", "object"], {"ticket": 7}, item("t-1", big=2**70)]
    fresh, fingerprints, skipped = reseen.split(odd)
    assert fresh == odd
    assert (fingerprints, skipped) == ({}, 0)


async def test_a_ticket_whose_video_links_are_owed_is_never_skipped(
    ingestor: EventIngestor, store: SqliteStore
) -> None:
    await ingestor.ingest([item("t-1")], job="events")

    # The state a failed GetVideoDetail leaves behind: the fetch is owed.
    async def owe(tx: IngestTx) -> None:
        prev = (await tx.seen_tickets(["t-1"]))["t-1"]
        owed = dataclasses.replace(prev, fingerprint={**prev.fingerprint, VIDEOS_DUE: True})
        await tx.put_tickets([TicketWrite(owed, prev)])

    await store.ingest(owe)
    await ingestor.ingest([item("t-1")], job="events")
    await ingestor.ingest([item("t-1")], job="events")
    # Every sighting takes the full path, so the next one retries the fetch.
    assert len(ingestor.reseen) == 0


async def ticket_state(store: Any, ticket: str) -> Any:
    async def read(tx: IngestTx) -> Any:
        return (await tx.seen_tickets([ticket]))[ticket]

    return await store.ingest(read)


# -- whole pages -------------------------------------------------------------------------


def test_a_page_digest_leaves_out_only_the_leading_uq() -> None:
    page = b'{"uq": "%s", "result": true, "code": "S00000", "data": [{"ticket": "t-1"}]}'
    assert page_digest(page % b"a-1") == page_digest(page % b"b-2")
    other = b'{"uq": "a-1", "result": true, "code": "S00000", "data": [{"ticket": "t-2"}]}'
    assert page_digest(page % b"a-1") != page_digest(other)
    # A uq elsewhere is content like any other field.
    late = b'{"result": true, "uq": "%s", "data": []}'
    assert page_digest(late % b"a-1") != page_digest(late % b"b-2")
    assert page_digest(b'{"uq": "a", "x": 1}') != page_digest(b'{"x": 1}')


def test_a_page_is_known_only_while_all_its_items_are() -> None:
    reseen = ReseenItems()
    items = [item("t-1"), item("t-2")]
    _, fingerprints, _, keys = reseen.split_page(items)
    assert keys is not None
    reseen.remember_page(7, KnownPage(2, 40), keys)
    assert reseen.known_page(7) is None  # its items were not remembered: not kept
    reseen.remember(fingerprints, ["t-1", "t-2"])
    reseen.remember_page(7, KnownPage(2, 40), keys)
    assert reseen.known_page(7) == KnownPage(2, 40)
    reseen.forget(["t-2"])  # t-2's stored state changed: the page must be read again
    assert reseen.known_page(7) is None
    reseen.remember(fingerprints, ["t-2"])
    assert reseen.known_page(7) is None  # dropped: learned again from a full read
    assert reseen.pages_known == 1


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["remember", "forget", "remember_page", "check"]),
        st.lists(st.integers(0, 5), max_size=3),  # tickets t-0 … t-5
        st.integers(0, 1),  # which fingerprint (item variant) a ticket is remembered with
        st.integers(0, 2),  # page digest
    ),
    max_size=40,
)


@given(_OPS)
def test_a_page_holds_exactly_while_every_item_is_remembered_as_it_was(ops: Any) -> None:
    """Whatever the order of remember / forget / eviction, `holds_page` (O(1) while no
    fingerprint was dropped or replaced) answers what checking every item would."""
    reseen = ReseenItems(capacity=4)
    variants = [
        reseen.split_page([item(f"t-{i}", type=3 + v) for i in range(6)])[1] for v in (0, 1)
    ]
    pages: dict[int, list[tuple[str, int]]] = {}
    for op, numbers, variant, digest in ops:
        tickets = [f"t-{n}" for n in numbers]
        if op == "remember":
            reseen.remember(variants[variant], tickets)
        elif op == "forget":
            reseen.forget(tickets)
        elif op == "remember_page":
            keys = [(t, variants[variant][t]) for t in tickets]
            before = reseen._pages.get(digest)
            reseen.remember_page(digest, KnownPage(len(keys), None), keys)
            if reseen._pages.get(digest) is not before:  # kept (else refused)
                pages[digest] = keys
        for d, keys in pages.items():
            naive = d in reseen._pages and all(reseen._fingerprints.get(t) == f for t, f in keys)
            assert reseen.holds_page(d) == naive


def test_page_capacity_counts_items_and_drops_the_oldest_pages_first() -> None:
    reseen = ReseenItems(page_capacity=5)
    items = [item(f"t-{i}") for i in range(6)]
    _, fingerprints, _, keys = reseen.split_page(items)
    assert keys is not None
    reseen.remember(fingerprints, [i["ticket"] for i in items])
    reseen.remember_page(1, KnownPage(2, None), keys[:2])
    reseen.remember_page(2, KnownPage(2, None), keys[2:4])
    reseen.remember_page(3, KnownPage(2, None), keys[4:])  # 6 items > 5: page 1 goes
    assert [reseen.known_page(d) is not None for d in (1, 2, 3)] == [False, True, True]
    reseen.remember_page(4, KnownPage(6, None), keys)  # larger than all: not kept
    assert [reseen.known_page(d) is not None for d in (2, 3, 4)] == [True, True, False]


async def rig_with_events(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path, count: int
) -> tuple[Rig, list[str]]:
    """A bridge reading 10 items a page, and `count` events of the last 10 minutes."""
    config = {"upstream": {"page_size": 10}, "poll": {"events": {"notify_updates": True}}}
    rig = await make_rig(aiohttp_server, aiohttp_client, tmp_path, config=config, webhook=False)
    now = int(rig.clock.now())
    tickets = [
        rig.sim.add_event(timestamp=now - 600 + i, video=False)["ticket"] for i in range(count)
    ]
    rig.clock.advance(1)
    assert rig.bridge.client is not None
    assert rig.bridge.ingestor is not None
    return rig, tickets


async def test_a_rescanned_page_of_unchanged_items_is_not_parsed(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    rig, tickets = await rig_with_events(aiohttp_server, aiohttp_client, tmp_path, 25)
    b = rig.bridge
    assert b.client is not None
    assert b.ingestor is not None
    cfg = b.settings.poll.events.model_copy(update={"lookback_s": 900, "head_lookback_s": 900})
    poller = EventsPoller(cfg, b.client, b.ingestor, rig.clock, b.metrics)
    reseen = b.ingestor.reseen

    assert (await poller.run_once()).created == 25
    checked = await poller.run_once()  # every item checked against the store: unchanged
    assert (checked.fetched, checked.duplicates, checked.created) == (25, 25, 0)
    before = reseen.pages_known
    skipped = await poller.run_once()
    assert (skipped.fetched, skipped.duplicates, skipped.created, skipped.updated) == (25, 25, 0, 0)
    assert reseen.pages_known - before == 3  # 10 + 10 + 5 items, none parsed

    # A media change on the middle page: that page is read in full and notified.
    changed = rig.sim.item(tickets[12])
    assert changed is not None
    changed.update(videos_count=1, videos_total_count=1)
    before = reseen.pages_known
    stats = await poller.run_once()
    assert (stats.fetched, stats.updated) == (25, 1)
    assert (await ticket_state(b.store, tickets[12])).revision == 2
    assert reseen.pages_known - before == 2


@given(
    start=st.integers(min_value=0, max_value=10**9),
    length=st.integers(min_value=0, max_value=20_000),
    step=st.integers(min_value=1, max_value=7200),
)
def test_aligned_windows_cover_the_range_on_a_fixed_grid(
    start: int, length: int, step: int
) -> None:
    windows = list(poll_windows(start, start + length, step, aligned=True))
    assert windows[0][0] == start
    assert windows[-1][1] == start + length
    for (_, hi), (next_lo, _) in itertools.pairwise(windows):
        assert hi == next_lo  # contiguous, sharing the boundary second
        assert hi % step == 0  # inner boundaries on the grid: the same every sweep
    assert all(0 <= hi - lo <= step for lo, hi in windows)
    assert len(windows) <= len(list(poll_windows(start, start + length, step))) + 1


async def test_a_known_page_can_still_be_read_in_full(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A page checked ahead of its use (prefetched) whose ticket changed state since
    is parsed after all: `holds_page` turns false and `Page.parsed` gives its items."""
    rig, tickets = await rig_with_events(aiohttp_server, aiohttp_client, tmp_path, 5)
    now = int(rig.clock.now())
    b = rig.bridge
    assert b.client is not None
    assert b.ingestor is not None
    reseen = b.ingestor.reseen

    async def read() -> list[Any]:
        pages = b.client.iter_event_pages(since=now - 700, until=now, memo=reseen.known_page)
        return [p async for p in pages]

    for _ in range(2):  # created, then found unchanged and remembered
        for page in await read():
            assert page.digest is not None
            known = (page.digest, KnownPage(page.received, page.count))
            await b.ingestor.ingest(page.items, job="events", page=known)
    (page,) = await read()
    assert page.known
    assert page.items == []
    assert page.digest is not None
    assert reseen.holds_page(page.digest)
    reseen.forget([tickets[2]])
    assert not reseen.holds_page(page.digest)
    full = page.parsed()
    assert not full.known
    assert [i["ticket"] for i in full.items] == tickets
    assert (full.received, full.count) == (page.received, page.count)
