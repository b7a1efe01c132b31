"""The store contract: every test here runs against SQLite AND a real PostgreSQL.

Both stores must behave the same wherever the pipeline depends on them: the ingest
transaction, insert-if-absent tickets and revision compare-and-set, claims with a
token and an expiry, outcomes under a claim, shared target state, the poll lease
and its fencing, operations and retention. Time is passed in explicitly or via
FakeClock; only the lease's expiry on PostgreSQL follows the database clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import wait_for
from pg_server import truncate
from structlog.testing import capture_logs

from bridge.clock import FakeClock
from bridge.notifications import Notification, build_notification
from bridge.store.base import (
    Delivery,
    DeliveryState,
    FencedOut,
    HandOff,
    IngestTx,
    NewNotification,
    Outcome,
    SeenTicket,
    Store,
    StoreRejected,
    StoreUnavailable,
    TargetState,
    TicketConflict,
    TicketWrite,
    decode_cursor,
)
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore

T0 = 1_764_000_000.0
CLAIM_S = 30.0

StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock
) -> AsyncIterator[StoreFactory]:
    """Opens stores on one fresh database (several = several replicas or processes)."""
    opened: list[Store] = []
    url = request.getfixturevalue("pg_database") if request.param == "postgresql" else ""

    async def factory() -> Store:
        s: Store
        if request.param == "sqlite":
            s = SqliteStore(tmp_path / "bridge.db", fake_clock, lease_s=CLAIM_S)
        else:
            s = PostgresStore(url, fake_clock, pool_size=4, claim_s=CLAIM_S)
        await s.open()
        if not opened and url:
            await truncate(url)  # the database is shared by the run's contract tests
        opened.append(s)
        return s

    yield factory
    for s in opened:
        await s.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    return await make_store()


def note(at: float = T0, type_: str = "event.created", **data: Any) -> Notification:
    payload = {"ticket": f"t-{at}", "occurred_at": "2025-11-24T16:00:00Z", **data}
    return build_notification(type_, payload, base_url="https://fleet.example.com", now=at)


async def add(store: Store, notes: Sequence[Notification], targets: Sequence[str]) -> None:
    async def fn(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(n, targets) for n in notes])

    await store.ingest(fn)


async def tickets(store: Store, *names: str) -> dict[str, SeenTicket]:
    async def read(tx: IngestTx) -> dict[str, SeenTicket]:
        return await tx.seen_tickets(list(names))

    result: dict[str, SeenTicket] = await store.ingest(read)
    return result


async def test_postgresql_key_columns_compare_bytes(
    pg_database: str, fake_clock: FakeClock
) -> None:
    # Migration 0007: the hot key columns' indexes compare bytes, whatever the
    # database's own collation (otherwise every comparison goes through strcoll).
    s = PostgresStore(pg_database, fake_clock, pool_size=1, claim_s=CLAIM_S)
    await s.open()
    await s.close()
    conn = await asyncpg.connect(pg_database)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND (table_name, column_name) IN "
            "(('notifications', 'id'), ('deliveries', 'notification_id'), "
            "('deliveries', 'target'), ('deliveries', 'state'), ('seen_tickets', 'ticket'))"
        )
    finally:
        await conn.close()
    assert {(r["table_name"], r["column_name"]): r["collation_name"] for r in rows} == {
        ("notifications", "id"): "C",
        ("deliveries", "notification_id"): "C",
        ("deliveries", "target"): "C",
        ("deliveries", "state"): "C",
        ("seen_tickets", "ticket"): "C",
    }


async def test_postgresql_outage_reads_as_one_even_if_an_older_operation_succeeds_in_it(
    pg_database: str, fake_clock: FakeClock
) -> None:
    # An operation under way on a connection that outlived the outage succeeds after
    # another one failed: that says nothing about new connections, so it must not log
    # "available again" (the next failure would log a second outage). An operation
    # begun after the failure does.
    s = PostgresStore(pg_database, fake_clock, pool_size=2, claim_s=CLAIM_S)
    await s.open()
    try:
        with capture_logs() as logs:
            async with s._conn("begun before") as conn:
                with contextlib.suppress(StoreUnavailable):
                    raise s._went_down("another operation", OSError("connection refused"))
                assert await conn.fetchval("SELECT 1") == 1
            assert [e["event"] for e in logs] == ["store unavailable"]
            await s.get_lease()  # begun after the failure: the store is back
            assert [e["event"] for e in logs] == ["store unavailable", "store available again"]
    finally:
        await s.close()


# -- ingest ------------------------------------------------------------------------------


async def test_ingest_commits_everything_together(store: Store) -> None:
    n = note(ticket="tk-1")
    seen = SeenTicket("tk-1", 1, {"has_video": True}, first_seen_at=T0, updated_at=T0)

    async def fn(tx: IngestTx) -> str:
        assert await tx.seen_tickets(["tk-1"]) == {}
        await tx.put_tickets([TicketWrite(seen, prev=None)])
        await tx.add_notifications([NewNotification(n, ["hook", "slack", "hook"])])
        await tx.set_cursor("events", T0 - 5)
        await tx.put_json("clip", "task-1", {"state": "upcoming"})
        assert await tx.get_json("clip", "task-1") == {"state": "upcoming"}
        return "done"

    assert await store.ingest(fn) == "done"
    assert await store.get_cursor("events") == T0 - 5
    assert await store.get_json("clip", "task-1") == {"state": "upcoming"}
    assert await store.list_json("clip") == [("task-1", {"state": "upcoming"})]
    rows, _ = await store.list_deliveries()
    # A duplicate target in one item still makes one delivery.
    assert sorted(r.target for r in rows) == ["hook", "slack"]
    [d] = await store.claim("hook", T0, 10, fifo=False)
    assert d.body == n.body
    assert await tickets(store, "tk-1", "tk-unknown") == {"tk-1": seen}


async def test_ingest_that_raises_stores_nothing(store: Store) -> None:
    async def setup(tx: IngestTx) -> None:
        await tx.set_cursor("events", T0 - 100)

    await store.ingest(setup)

    class Boom(Exception):
        pass

    async def fn(tx: IngestTx) -> None:
        await tx.put_tickets([SeenTicket("tk-2", 1, {}, T0, T0)])
        await tx.add_notifications([NewNotification(note(), ["hook"])])
        await tx.set_cursor("events", T0)
        await tx.put_json("clip", "task-1", {"state": "upcoming"})
        raise Boom

    with pytest.raises(Boom):
        await store.ingest(fn)
    assert await store.get_cursor("events") == T0 - 100
    assert await store.count_notifications() == 0
    assert await store.get_json("clip", "task-1") is None
    assert await tickets(store, "tk-2") == {}
    assert await store.list_deliveries() == ([], None)


async def test_fresh_rows_handed_off_claimed_only_by_a_store_of_one_process(
    store: Store,
) -> None:
    # SQLite (one process) inserts the first `limit` new rows of a target in flight
    # under the hand-off's token and returns them; PostgreSQL ignores the hand-off,
    # so fresh rows stay claimable by every replica. Either way the rest is pending.
    notes = [note(T0 + i) for i in range(4)]

    async def fn(tx: IngestTx) -> list[Delivery]:
        return await tx.add_notifications(
            [NewNotification(n, ["hook", "slack"]) for n in notes],
            claims={"hook": HandOff("tok", 2)},
        )

    handed: list[Delivery] = await store.ingest(fn)
    if store.shared:
        assert handed == []
    else:
        assert [d.notification_id for d in handed] == [n.id for n in notes[:2]]
        assert [d.body for d in handed] == [n.body for n in notes[:2]]
        assert {(d.target, d.claim, d.attempts, d.claim_until) for d in handed} == {
            ("hook", "tok", 0, T0 + CLAIM_S)
        }
    claimed = await store.claim("hook", T0, 10, fifo=False)
    assert [d.notification_id for d in claimed] == [n.id for n in notes[len(handed) :]]
    assert len(await store.claim("slack", T0, 10, fifo=False)) == 4
    # Outcomes under the hand-off's token count as under any claim's.
    await store.record_outcomes(
        [Outcome(d.id, DeliveryState.DELIVERED, 1, claim=d.claim) for d in handed + claimed], T0
    )
    assert "hook" not in await store.queue_counts()  # nothing pending, in flight or dead


async def test_delete_json_forgets_in_the_transaction(store: Store) -> None:
    async def put(tx: IngestTx) -> None:
        await tx.put_json("push", "a", {"n": 1})
        await tx.put_json("push", "b", {"n": 2})

    async def delete(tx: IngestTx) -> None:
        await tx.delete_json("push", "a")
        assert await tx.get_json("push", "a") is None

    await store.ingest(put)
    await store.ingest(delete)
    assert await store.list_json("push") == [("b", {"n": 2})]


async def test_wake_fires_after_commit_for_targets_with_new_rows(store: Store) -> None:
    woken: list[str] = []
    for target in ("hook", "slack", "mqtt"):
        store.subscribe(target, lambda t=target: woken.append(t))  # type: ignore[misc]

    async def failing(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(note(), ["hook"])])
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await store.ingest(failing)
    assert woken == []
    await add(store, [note(T0), note(T0 + 1)], ["hook", "slack"])
    assert sorted(set(woken)) == ["hook", "slack"]


# -- tickets: insert-if-absent and revision compare-and-set ---------------------------------


async def test_a_ticket_is_inserted_only_if_absent(store: Store) -> None:
    first = SeenTicket("tk", 1, {"has_video": False}, T0, T0)

    async def insert(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(first, prev=None)])

    await store.ingest(insert)
    other = SeenTicket("tk", 1, {"has_video": True}, T0 + 1, T0 + 1)

    async def insert_again(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(other, prev=None)])

    # The ingest retries the same stale write every time, then gives up.
    with pytest.raises(TicketConflict):
        await store.ingest(insert_again)
    assert (await tickets(store, "tk"))["tk"] == first


async def test_a_revision_moves_only_from_the_revision_read(store: Store) -> None:
    r1 = SeenTicket("tk", 1, {"has_video": False}, T0, T0)
    r2 = SeenTicket("tk", 2, {"has_video": True}, T0, T0 + 5)

    async def setup(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(r1, prev=None)])

    async def move(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(r2, prev=r1)])

    await store.ingest(setup)
    await store.ingest(move)
    assert (await tickets(store, "tk"))["tk"] == r2
    with pytest.raises(TicketConflict):
        await store.ingest(move)  # r1 is no longer what is stored
    assert (await tickets(store, "tk"))["tk"] == r2


async def test_one_stale_ticket_fails_its_whole_batch(store: Store) -> None:
    """Ticket writes are checked per batch (set-based): one stale row among many is
    caught, and nothing of the batch is stored."""
    a1, b1 = SeenTicket("a", 1, {}, T0, T0), SeenTicket("b", 1, {}, T0, T0)

    async def setup(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(a1, prev=None), TicketWrite(b1, prev=None)])

    await store.ingest(setup)
    c1, d1 = SeenTicket("c", 1, {}, T0 + 1, T0 + 1), SeenTicket("d", 1, {}, T0 + 1, T0 + 1)
    b_again = SeenTicket("b", 1, {"has_video": True}, T0 + 1, T0 + 1)

    async def insert_with_one_present(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(t, prev=None) for t in (c1, b_again, d1)])

    with pytest.raises(TicketConflict):
        await store.ingest(insert_with_one_present)
    assert await tickets(store, "a", "b", "c", "d") == {"a": a1, "b": b1}

    a2 = SeenTicket("a", 2, {"has_video": True}, T0, T0 + 2)
    b2 = SeenTicket("b", 3, {"has_video": True}, T0, T0 + 2)
    stale_b = SeenTicket("b", 2, {}, T0, T0)  # b is at revision 1, not 2

    async def move_with_one_stale(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(a2, prev=a1), TicketWrite(b2, prev=stale_b)])

    with pytest.raises(TicketConflict):
        await store.ingest(move_with_one_stale)
    assert await tickets(store, "a", "b") == {"a": a1, "b": b1}

    async def move_both(tx: IngestTx) -> None:
        await tx.put_tickets([TicketWrite(a2, prev=a1), TicketWrite(b2, prev=b1)])

    await store.ingest(move_both)
    assert await tickets(store, "a", "b") == {"a": a2, "b": b2}


async def test_ingest_of_new_events_that_raises_stores_nothing(store: Store) -> None:
    """The poll path alone (tickets, notifications, cursor): PostgreSQL sends these as
    one statement at the end, so nothing of a callback that fails reaches the store."""

    class Boom(Exception):
        pass

    async def fn(tx: IngestTx) -> None:
        assert await tx.seen_tickets(["tk-new"]) == {}
        await tx.put_tickets([TicketWrite(SeenTicket("tk-new", 1, {}, T0, T0), prev=None)])
        await tx.add_notifications([NewNotification(note(ticket="tk-new"), ["hook"])])
        await tx.set_cursor("events", T0)
        raise Boom

    with pytest.raises(Boom):
        await store.ingest(fn)
    assert await store.get_cursor("events") is None
    assert await store.count_notifications() == 0
    assert await tickets(store, "tk-new") == {}


async def test_an_ingest_reads_its_own_writes(store: Store) -> None:
    first = SeenTicket("tk", 1, {"has_video": False}, T0, T0)
    second = SeenTicket("tk", 2, {"has_video": True}, T0, T0 + 1)
    created, updated = note(ticket="tk"), note(T0 + 1, "event.updated", ticket="tk")

    async def fn(tx: IngestTx) -> dict[str, SeenTicket]:
        await tx.put_tickets([TicketWrite(first, prev=None)])
        await tx.add_notifications([NewNotification(created, ["hook"])])
        await tx.set_cursor("events", T0)
        seen = await tx.seen_tickets(["tk"])
        await tx.put_tickets([TicketWrite(second, prev=seen["tk"])])
        await tx.add_notifications([NewNotification(updated, ["hook"])])
        await tx.set_cursor("events", T0 + 1)
        return seen

    assert await store.ingest(fn) == {"tk": first}
    assert await tickets(store, "tk") == {"tk": second}
    assert await store.count_notifications() == 2
    assert await store.get_cursor("events") == T0 + 1
    rows = await store.claim("hook", T0 + 1, 10, fifo=False)
    assert [d.notification_id for d in rows] == [created.id, updated.id]  # creation order


async def test_ingest_runs_again_after_a_conflict_with_fresh_state(store: Store) -> None:
    stored = SeenTicket("tk", 1, {}, T0, T0)

    async def setup(tx: IngestTx) -> None:
        await tx.put_tickets([stored])

    await store.ingest(setup)
    runs: list[dict[str, SeenTicket]] = []

    async def decide(tx: IngestTx) -> int:
        known = await tx.seen_tickets(["tk"])
        # The first run acts on what it read before another writer moved the ticket.
        prev = None if not runs else known.get("tk")
        runs.append(known)
        if prev is None:
            await tx.add_notifications([NewNotification(note(ticket="tk"), ["hook"])])
        await tx.put_tickets([TicketWrite(SeenTicket("tk", 2, {"x": 1}, T0, T0 + 1), prev)])
        return len(runs)

    assert await store.ingest(decide) == 2
    assert runs[1] == {"tk": stored}
    assert await store.count_notifications() == 0  # the first run's work rolled back


async def test_concurrent_writers_create_a_ticket_once(make_store: StoreFactory) -> None:
    stores = [await make_store(), await make_store()]

    async def create(tx: IngestTx) -> None:
        prev = (await tx.seen_tickets(["tk"])).get("tk")
        if prev is not None:
            return  # a duplicate: nothing to notify
        await tx.put_tickets([TicketWrite(SeenTicket("tk", 1, {}, T0, T0), prev=None)])
        await tx.add_notifications([NewNotification(note(ticket="tk"), ["hook"])])

    await asyncio.gather(*(stores[i % 2].ingest(create) for i in range(12)))
    assert await stores[0].count_notifications() == 1


# -- claims --------------------------------------------------------------------------------


async def test_claim_returns_due_rows_oldest_first_up_to_limit(store: Store) -> None:
    notes = [note(T0 + i) for i in range(5)]
    await add(store, notes, ["hook"])
    await add(store, [note(T0 + 9)], ["slack"])

    first = await store.claim("hook", T0 + 10, 2, fifo=False)
    rest = await store.claim("hook", T0 + 10, 10, fifo=False)
    assert [d.notification_id for d in first + rest] == [n.id for n in notes]
    assert [d.id for d in first + rest] == sorted(d.id for d in first + rest)
    assert await store.claim("hook", T0 + 10, 10, fifo=False) == []  # all in flight

    d = first[0]
    assert (d.target, d.type, d.body, d.attempts) == ("hook", "event.created", notes[0].body, 0)
    assert d.created_at == notes[0].created_at
    assert d.event_at == 1_764_000_000.0  # occurred_at 2025-11-24T16:00:00Z
    assert d.claim
    assert d.claim_until == T0 + 10 + CLAIM_S
    assert first[0].claim == first[1].claim != rest[0].claim  # one token per claim


async def test_claim_skips_rows_not_yet_due(store: Store) -> None:
    await add(store, [note(), note(T0 + 1)], ["hook"])
    a, b = await store.claim("hook", T0 + 1, 10, fifo=False)
    await store.record_outcomes(
        [
            Outcome(a.id, DeliveryState.PENDING, 1, status=503, next_attempt_at=T0 + 60),
            Outcome(b.id, DeliveryState.PENDING, 1, status=503, next_attempt_at=T0 + 30),
        ],
        T0 + 2,
    )
    assert await store.claim("hook", T0 + 29, 10, fifo=False) == []
    assert await store.next_due_at("hook", fifo=False) == T0 + 30
    [again] = await store.claim("hook", T0 + 30, 10, fifo=False)
    assert (again.id, again.attempts) == (b.id, 1)
    assert await store.next_due_at("hook", fifo=False) == T0 + 60


async def test_an_expired_claim_is_claimed_again(store: Store) -> None:
    await add(store, [note()], ["hook"])
    [d] = await store.claim("hook", T0, 10, fifo=False)
    assert await store.next_due_at("hook", fifo=False) == T0 + CLAIM_S
    assert await store.claim("hook", T0 + CLAIM_S, 10, fifo=False) == []
    [again] = await store.claim("hook", T0 + CLAIM_S + 1, 10, fifo=False)
    assert (again.id, again.attempts) == (d.id, 0)
    assert again.claim != d.claim


async def test_concurrent_claims_never_hand_out_a_row_twice(make_store: StoreFactory) -> None:
    stores = [await make_store(), await make_store()]
    await add(stores[0], [note(T0 + i) for i in range(100)], ["hook"])
    batches = await asyncio.gather(
        *(stores[i % 2].claim("hook", T0 + 100, 7, fifo=False) for i in range(20))
    )
    ids = [d.id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 100


async def test_fifo_head_of_line_blocks_the_rest(store: Store) -> None:
    notes = [note(T0 + i) for i in range(3)]
    await add(store, notes, ["hook"])
    [head] = await store.claim("hook", T0 + 5, 10, fifo=True)
    assert head.notification_id == notes[0].id
    assert await store.claim("hook", T0 + 5, 10, fifo=True) == []  # head in flight
    assert await store.next_due_at("hook", fifo=True) == T0 + 5 + CLAIM_S

    await store.record_outcomes(
        [Outcome(head.id, DeliveryState.PENDING, 1, status=500, next_attempt_at=T0 + 60)], T0 + 6
    )
    assert await store.claim("hook", T0 + 59, 10, fifo=True) == []  # others due, head not
    assert await store.next_due_at("hook", fifo=True) == T0 + 60
    assert await store.next_due_at("hook", fifo=False) == T0  # the others wait behind it
    [retried] = await store.claim("hook", T0 + 60, 10, fifo=True)
    assert (retried.id, retried.attempts) == (head.id, 1)

    await store.record_outcomes([Outcome(head.id, DeliveryState.DEAD, 2)], T0 + 61)
    [second] = await store.claim("hook", T0 + 61, 10, fifo=True)
    assert second.notification_id == notes[1].id
    await store.record_outcomes([Outcome(second.id, DeliveryState.DELIVERED, 1)], T0 + 62)
    [third] = await store.claim("hook", T0 + 62, 10, fifo=True)
    assert third.notification_id == notes[2].id
    await store.record_outcomes([Outcome(third.id, DeliveryState.DELIVERED, 1)], T0 + 63)
    assert await store.next_due_at("hook", fifo=True) is None


async def test_max_in_flight_caps_live_claims_of_all_claimers(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    await add(a, [note(T0 + i) for i in range(6)], ["hook"])
    first = await a.claim("hook", T0 + 6, 10, fifo=False, max_in_flight=2)
    assert len(first) == 2
    assert await b.claim("hook", T0 + 6, 10, fifo=False, max_in_flight=2) == []
    await a.record_outcomes(
        [Outcome(first[0].id, DeliveryState.DELIVERED, 1, claim=first[0].claim)], T0 + 7
    )
    assert len(await b.claim("hook", T0 + 7, 10, fifo=False, max_in_flight=2)) == 1
    # An expired claim no longer counts (its claimer is gone), and its row is due again.
    later = await b.claim("hook", T0 + 7 + CLAIM_S + 1, 10, fifo=False, max_in_flight=2)
    assert len(later) == 2


async def test_claim_share_settles_the_outcomes_then_claims(store: Store) -> None:
    await add(store, [note(T0 + i) for i in range(4)], ["hook"])
    kw: dict[str, Any] = {"max_in_flight": 8, "replica": "r1", "sending": 0}
    first = await store.claim_share("hook", T0 + 5, 2, queued=0, **kw)
    assert len(first.deliveries) == 2
    assert first.share == (2 if store.shared else 8)  # one writer process: the whole cap
    done = [Outcome(d.id, DeliveryState.DELIVERED, 1, claim=d.claim) for d in first.deliveries]
    # A foreign claim's outcome is ignored here too.
    stale = Outcome(first.deliveries[0].id, DeliveryState.DEAD, 1, claim="someone-else")
    second = await store.claim_share("hook", T0 + 6, 10, queued=0, outcomes=[stale, *done], **kw)
    assert len(second.deliveries) == 2
    assert {d.id for d in second.deliveries}.isdisjoint(d.id for d in first.deliveries)
    counts = (await store.queue_counts())["hook"]
    assert (counts["in_flight"], counts["pending"]) == (2, 0)
    assert await store.count_notifications() == 4
    rows, _ = await store.list_deliveries(limit=10)
    assert sorted(r.state for r in rows) == ["delivered", "delivered", "in_flight", "in_flight"]


async def test_in_flight_shares_are_fair_and_never_exceed_the_cap(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store(), await make_store()
    await add(a, [note(T0 + i) for i in range(40)], ["hook"])
    cap = {"max_in_flight": 8}
    got_a = await a.claim_share("hook", T0 + 50, 16, replica="a", sending=0, queued=0, **cap)
    assert (len(got_a.deliveries), got_a.share) == (16, 8)  # alone: the whole cap
    got_b = await b.claim_share("hook", T0 + 50, 16, replica="b", sending=0, queued=0, **cap)
    assert len(got_b.deliveries) == 16  # claims are not capped, sends are
    if not a.shared:
        assert got_b.share == 8  # one writer process (SQLite): the share is the cap
        return
    assert got_b.share == 0  # a holds every slot
    assert got_b.fair == 4  # so b asks again soon: a is over its fair share
    # a, sending 6, learns that b wants slots: its share halves; it keeps the slots of
    # the 6 sends under way until they end (the store counts max(sending, share)).
    got_a = await a.claim_share("hook", T0 + 51, 0, replica="a", sending=6, queued=14, **cap)
    assert got_a.share == 4
    got_b = await b.claim_share("hook", T0 + 51, 0, replica="b", sending=0, queued=16, **cap)
    assert got_b.share == 2  # 8 - 6 still under way at a
    got_a = await a.claim_share("hook", T0 + 52, 0, replica="a", sending=3, queued=10, **cap)
    assert got_a.share == 4
    got_b = await b.claim_share("hook", T0 + 52, 0, replica="b", sending=2, queued=16, **cap)
    assert got_b.share == 4  # fair: half each
    assert got_b.fair == 4  # nothing more to wait for
    # A clean stop gives a's slots back at once.
    await a.claim_share("hook", T0 + 53, 0, replica="a", sending=0, queued=0, **cap)
    got_b = await b.claim_share("hook", T0 + 53, 0, replica="b", sending=4, queued=16, **cap)
    assert got_b.share == 8
    # A replica that stops asking (dead, frozen) loses its slots with the claim lease.
    got_a = await a.claim_share("hook", T0 + 54, 0, replica="a", sending=0, queued=8, **cap)
    assert got_a.share == 0  # b holds them all
    assert got_a.until == T0 + 54 + CLAIM_S
    later = T0 + 53 + CLAIM_S + 1  # b's share has lapsed
    got_a = await a.claim_share("hook", later, 0, replica="a", sending=0, queued=8, **cap)
    assert got_a.share == 8


async def test_a_paused_or_held_target_hands_out_nothing(store: Store) -> None:
    await add(store, [note()], ["hook"])
    assert await store.pause_target("hook", "410 Gone") is True
    assert await store.pause_target("hook", "again") is False
    assert await store.claim("hook", T0, 10, fifo=False) == []
    assert await store.claim("hook", T0, 10, fifo=True) == []
    assert await store.resume_target("hook") is True
    assert await store.resume_target("hook") is False
    await store.hold_target("hook", T0 + 20)
    await store.hold_target("hook", T0 + 10)  # never shortens
    assert (await store.get_target_state("hook")).hold_until == T0 + 20
    assert await store.claim("hook", T0 + 19, 10, fifo=False) == []
    assert len(await store.claim("hook", T0 + 20, 10, fifo=False)) == 1


async def test_pause_and_resume_are_shared(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    woken: list[str] = []
    a.subscribe("hook", lambda: woken.append("a"))
    await b.pause_target("hook", "receiver answered 410")
    state = await a.get_target_state("hook")
    assert (state.paused, state.paused_reason) == (True, "receiver answered 410")
    assert await b.resume_target("hook") is True
    assert (await a.get_target_state("hook")).paused is False
    if isinstance(a, PostgresStore):  # another process: woken through LISTEN/NOTIFY
        await wait_for(lambda: "a" in woken, message="a NOTIFY from the other replica")


async def test_send_slots_are_spaced_for_the_target_as_a_whole(make_store: StoreFactory) -> None:
    a, b = await make_store(), await make_store()
    slots = [
        await a.reserve_send_slot("slack", T0, 1.0),
        await b.reserve_send_slot("slack", T0, 1.0),
        await a.reserve_send_slot("slack", T0 + 0.5, 1.0),
    ]
    assert slots == [T0, T0 + 1, T0 + 2]
    # An idle target does not bank a burst.
    assert await b.reserve_send_slot("slack", T0 + 100, 1.0) == T0 + 100
    assert await a.reserve_send_slot("other", T0 + 100, 1.0) == T0 + 100


# -- outcomes -------------------------------------------------------------------------------


async def test_record_outcomes_sets_each_state(store: Store) -> None:
    await add(store, [note(T0 + i) for i in range(3)], ["hook"])
    ok, retry, dead = await store.claim("hook", T0 + 3, 10, fifo=False)
    await store.record_outcomes(
        [
            Outcome(ok.id, DeliveryState.DELIVERED, 1, status=200, claim=ok.claim),
            Outcome(retry.id, DeliveryState.PENDING, 1, status=429, error="slow down"),
            Outcome(dead.id, DeliveryState.DEAD, 5, status=400, error="x" * 2000),
        ],
        T0 + 4,
    )
    rows, _ = await store.list_deliveries()
    by_id = {r.id: r for r in rows}
    assert by_id[ok.id].state is DeliveryState.DELIVERED
    assert (by_id[ok.id].last_status, by_id[ok.id].next_attempt_at) == (200, None)
    r = by_id[retry.id]
    assert (r.state, r.attempts, r.last_status, r.last_error) == ("pending", 1, 429, "slow down")
    assert r.next_attempt_at == T0 + 4  # no time given: due at once
    d = by_id[dead.id]
    assert (d.state, d.attempts, d.last_status) == (DeliveryState.DEAD, 5, 400)
    assert d.last_error is not None
    assert len(d.last_error) == 500


async def test_outcomes_under_a_foreign_or_expired_claim_are_ignored(store: Store) -> None:
    await add(store, [note(), note(T0 + 1)], ["hook"])
    [a] = await store.claim("hook", T0 + 1, 1, fifo=False)  # expires at T0 + 31
    [b] = await store.claim("hook", T0 + 20, 1, fifo=False)  # expires at T0 + 50
    # a's claim expired and another claimer took the row; a's first claimer reports late.
    [a2] = await store.claim("hook", T0 + 40, 10, fifo=False)
    assert a2.id == a.id
    await store.record_outcomes(
        [
            Outcome(a.id, DeliveryState.DEAD, 1, claim=a.claim),
            Outcome(b.id, DeliveryState.DELIVERED, 1, claim="someone-else"),
        ],
        T0 + 41,
    )
    states = {r.id: r.state for r in (await store.list_deliveries())[0]}
    assert states == {a.id: DeliveryState.IN_FLIGHT, b.id: DeliveryState.IN_FLIGHT}
    # An outcome after its own claim expired is ignored too, even if nobody re-claimed.
    await store.record_outcomes([Outcome(b.id, DeliveryState.DELIVERED, 1, claim=b.claim)], T0 + 51)
    await store.record_outcomes(
        [Outcome(a2.id, DeliveryState.DELIVERED, 1, claim=a2.claim)], T0 + 42
    )
    states = {r.id: r.state for r in (await store.list_deliveries())[0]}
    assert states == {a.id: DeliveryState.DELIVERED, b.id: DeliveryState.IN_FLIGHT}


async def test_a_late_outcome_does_not_reopen_a_finished_row(store: Store) -> None:
    await add(store, [note()], ["hook"])
    [d] = await store.claim("hook", T0, 1, fifo=False)
    await store.record_outcomes([Outcome(d.id, DeliveryState.DELIVERED, 1, status=200)], T0 + 1)
    await store.record_outcomes(
        [Outcome(d.id, DeliveryState.PENDING, 1, status=503, next_attempt_at=T0 + 2)], T0 + 1
    )
    [row], _ = await store.list_deliveries()
    assert row.state is DeliveryState.DELIVERED
    with pytest.raises(ValueError, match="in_flight"):
        await store.record_outcomes([Outcome(d.id, DeliveryState.IN_FLIGHT, 1)], T0)


async def test_recover_releases_expired_claims(store: Store, fake_clock: FakeClock) -> None:
    await add(store, [note(T0)], ["hook"])
    await add(store, [note(T0 + 1)], ["slack"])
    [old] = await store.claim("hook", fake_clock.now(), 1, fifo=False)
    fake_clock.advance(CLAIM_S + 5)
    [live] = await store.claim("slack", fake_clock.now(), 1, fifo=False)
    released = await store.recover()
    # SQLite (one process) frees every claim at start-up; shared stores only dead ones.
    assert released == (1 if store.shared else 2)
    [again] = await store.claim("hook", fake_clock.now(), 10, fifo=False)
    assert (again.id, again.attempts) == (old.id, 0)
    assert live.id != old.id


async def test_target_state_round_trips(store: Store) -> None:
    assert await store.get_target_state("hook") == TargetState()
    paused = TargetState(paused=True, paused_reason="410 Gone", hold_until=T0 + 9)
    await store.set_target_state("hook", paused)
    assert await store.get_target_state("hook") == paused
    await store.set_target_state("hook", TargetState())
    assert await store.get_target_state("hook") == TargetState()


# -- a failing target's probe ------------------------------------------------------------


def delay(failures: int) -> float:
    """A probe cadence for the tests: the n-th failure waits n seconds."""
    return float(failures)


async def fail(store: Store, times: int, at: float = T0, *, probe: bool = False) -> TargetState:
    state = TargetState()
    for _ in range(times):
        state, _started = await store.target_failed(
            "hook", at, probe=probe, failing_after=5, probe_delay=delay
        )
    return state


async def test_failures_of_all_writers_make_the_target_failing_once(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store(), await make_store()
    await fail(a, 2)
    assert (await fail(b, 2)).failures == 4  # counted for the target as a whole
    assert not (await a.get_target_state("hook")).failing
    results = await asyncio.gather(
        *(
            s.target_failed("hook", T0, probe=False, failing_after=5, probe_delay=delay)
            for s in (a, b, a)
        )
    )
    # One of the three made it failing (first probe after delay(5)); the failures
    # of sends already under way once it fails do not move the cadence.
    assert [started for _state, started in results].count(True) == 1
    stored = await b.get_target_state("hook")
    assert (stored.failures, stored.probe_at) == (5, T0 + 5)
    # While failing, no ordinary claim gives anything out, due or not.
    await add(a, [note(T0)], ["hook"])
    assert await a.claim("hook", T0 + 100, 10, fifo=False) == []
    assert await b.claim("hook", T0 + 100, 10, fifo=True, max_in_flight=1) == []


async def test_one_probe_of_all_writers_when_due_and_the_next_at_the_cadence(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store(), await make_store()
    await add(a, [note(T0), note(T0 + 1), note(T0 + 2)], ["hook", "other"])
    first, second, third = await a.claim("hook", T0, 10, fifo=False)
    later = [
        Outcome(d.id, DeliveryState.PENDING, 1, 503, "down", T0 + 1000)
        for d in (first, second, third)
    ]
    await a.record_outcomes(later, T0)
    assert await a.claim_probe("hook", T0 + 10) is None  # not failing: no probe
    await fail(b, 5)  # failing; first probe at T0 + 5
    assert await a.claim_probe("hook", T0 + 4) is None  # not due yet
    probes = await asyncio.gather(*(s.claim_probe("hook", T0 + 10) for s in (a, b, a, b)))
    won = [p for p in probes if p is not None]
    assert len(won) == 1  # one probe for the target, whoever asks
    probe = won[0]
    assert (probe.id, probe.attempts) == (first.id, 1)  # the oldest, although not due
    # Its claim holds the next probe back, even once the probe is due again.
    assert await b.claim_probe("hook", T0 + 10 + CLAIM_S - 1) is None
    # The probe fails: the next one after delay(6), the cadence of the whole target.
    state, started = await b.target_failed(
        "hook", T0 + 11, probe=True, failing_after=5, probe_delay=delay
    )
    assert (state.failures, state.probe_at, started) == (6, T0 + 17, False)
    await a.record_outcomes([replace(later[0], claim=probe.claim)], T0 + 11)
    assert await a.claim_probe("hook", T0 + 16) is None
    assert await b.claim_probe("hook", T0 + 17) is not None
    assert (await a.queue_counts())["other"]["pending"] == 3


async def test_the_first_success_anywhere_releases_the_waiting_rows_everywhere(
    make_store: StoreFactory,
) -> None:
    a, b = await make_store(), await make_store()
    await add(a, [note(T0), note(T0 + 1), note(T0 + 2)], ["hook"])
    claimed = await a.claim("hook", T0, 10, fifo=False)
    waiting = [Outcome(d.id, DeliveryState.PENDING, 1, 503, "down", T0 + 1000) for d in claimed]
    await a.record_outcomes(waiting, T0)
    assert await a.target_recovered("hook", T0) is None  # nothing to end
    await fail(a, 3)
    assert await b.target_recovered("hook", T0) is None  # a streak ends, nothing waited
    assert (await a.get_target_state("hook")).failures == 0
    await fail(a, 5)
    woken: list[str] = []
    a.subscribe("hook", lambda: woken.append("a"))
    b.subscribe("hook", lambda: woken.append("b"))
    assert await b.target_recovered("hook", T0 + 20) == 3
    assert "b" in woken
    assert await a.target_recovered("hook", T0 + 20) is None  # ended once
    assert await a.get_target_state("hook") == TargetState()
    assert len(await a.claim("hook", T0 + 20, 10, fifo=False)) == 3
    if isinstance(a, PostgresStore):  # another process: woken through LISTEN/NOTIFY
        await wait_for(lambda: "a" in woken, message="a NOTIFY from the other replica")


async def test_expire_pending_dead_letters_only_old_pending_rows_of_one_target(
    store: Store, fake_clock: FakeClock
) -> None:
    await add(store, [note(T0)], ["hook", "other"])
    fake_clock.advance(100)
    await add(store, [note(T0 + 100)], ["hook"])
    assert await store.expire_pending("hook", fake_clock.now() - 50, fake_clock.now()) == 1
    counts = await store.queue_counts()
    assert counts["hook"] == {"pending": 1, "in_flight": 0, "dead": 1}
    assert counts["other"] == {"pending": 1, "in_flight": 0, "dead": 0}
    (dead,), _ = await store.list_deliveries(state=DeliveryState.DEAD)
    assert dead.last_error is not None
    assert "max_age_s" in dead.last_error


# -- the poll lease -------------------------------------------------------------------------


async def test_the_lease_has_one_holder_and_a_new_epoch_per_holder(store: Store) -> None:
    assert await store.get_lease() is None
    a = await store.acquire_lease("a", 30)
    assert a is not None
    assert (a.holder, a.epoch) == ("a", 1)
    assert await store.acquire_lease("b", 30) is None
    renewed = await store.renew_lease("a", 1, 30)
    assert renewed is not None
    assert renewed.epoch == 1
    assert renewed.expires_at >= a.expires_at
    assert await store.renew_lease("b", 1, 30) is None
    # Taken again by its holder (it lost it locally): a new epoch fences its old work.
    again = await store.acquire_lease("a", 30)
    assert again is not None
    assert (again.holder, again.epoch) == ("a", 2)
    assert await store.renew_lease("a", 1, 30) is None
    await store.release_lease("a", 2)
    assert await store.renew_lease("a", 2, 30) is None  # released: gone for good
    b = await store.acquire_lease("b", 30)
    assert b is not None
    assert (b.holder, b.epoch) == ("b", 3)
    assert await store.get_lease() == b


async def test_an_expired_lease_is_taken_over(store: Store, fake_clock: FakeClock) -> None:
    a = await store.acquire_lease("a", 0.2)
    assert a is not None
    assert await store.acquire_lease("b", 0.2) is None

    async def taken() -> bool:
        fake_clock.advance(0.05)  # SQLite's lease follows the store clock
        return await store.acquire_lease("b", 30) is not None

    await wait_for(taken, timeout=5, message="the lease to expire")
    assert await store.renew_lease("a", a.epoch, 30) is None
    lease = await store.get_lease()
    assert lease is not None
    assert (lease.holder, lease.epoch) == ("b", a.epoch + 1)


async def test_cursor_writes_are_fenced_by_the_lease(make_store: StoreFactory) -> None:
    old, new = await make_store(), await make_store()
    a = await old.acquire_lease("old", 30)
    assert a is not None
    old.set_fence("old", a.epoch)

    async def move(value: float) -> Callable[[IngestTx], Awaitable[None]]:
        async def fn(tx: IngestTx) -> None:
            await tx.add_notifications([NewNotification(note(value), ["hook"])])
            await tx.set_cursor("events", value)

        return fn

    await old.ingest(await move(T0))
    await old.release_lease("old", a.epoch)
    b = await new.acquire_lease("new", 30)
    assert b is not None
    new.set_fence("new", b.epoch)
    with pytest.raises(FencedOut):
        await old.ingest(await move(T0 + 1))  # a stale leader: all of it rolls back
    await new.ingest(await move(T0 + 2))
    assert await new.get_cursor("events") == T0 + 2
    assert await new.count_notifications() == 2


# -- operations -------------------------------------------------------------------------------


async def test_api_cursors_are_opaque(store: Store) -> None:
    await add(store, [note(T0 + i) for i in range(3)], ["hook"])
    page, cursor = await store.list_deliveries(limit=1)
    assert cursor is not None
    assert not cursor.isdecimal()
    assert decode_cursor(cursor) == page[0].id
    for bad in ("abc", "12", "d1.!!", "d1." + "A" * 60):
        with pytest.raises(ValueError, match="cursor"):
            await store.list_deliveries(cursor=bad)


async def test_a_cancelled_ingest_rolls_back_and_frees_the_store(store: Store) -> None:
    inside = asyncio.Event()

    async def stuck(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(note(), ["hook"])])
        inside.set()
        await asyncio.Event().wait()  # e.g. shutdown cancels the poll mid-transaction

    task = asyncio.create_task(store.ingest(stuck))
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.count_notifications() == 0
    await add(store, [note()], ["hook"])  # no transaction was left open
    assert await store.count_notifications() == 1


async def test_put_tickets_keeps_the_first_sighting(store: Store) -> None:
    async def put(tx: IngestTx) -> None:
        await tx.put_tickets([SeenTicket("tk", 1, {"v": 1}, T0, T0)])

    async def update(tx: IngestTx) -> None:
        await tx.put_tickets([SeenTicket("tk", 2, {"v": 2}, T0 + 50, T0 + 50)])

    async def read(tx: IngestTx) -> dict[str, SeenTicket]:
        return await tx.seen_tickets(["tk"])

    await store.ingest(put)
    await store.ingest(update)
    assert (await store.ingest(read))["tk"] == SeenTicket("tk", 2, {"v": 2}, T0, T0 + 50)


async def test_retry_delivery_requeues_only_dead_rows(store: Store) -> None:
    await add(store, [note(), note(T0 + 1)], ["hook"])
    dead, pending = await store.claim("hook", T0 + 1, 10, fifo=False)
    await store.record_outcomes(
        [
            Outcome(dead.id, DeliveryState.DEAD, 8, status=500, error="boom"),
            Outcome(pending.id, DeliveryState.PENDING, 1, next_attempt_at=T0 + 100),
        ],
        T0 + 2,
    )
    woken: list[str] = []
    store.subscribe("hook", lambda: woken.append("hook"))
    assert await store.retry_delivery(pending.id, T0 + 3) is False
    assert await store.retry_delivery(999_999, T0 + 3) is False
    assert woken == []
    assert await store.retry_delivery(dead.id, T0 + 3) is True
    assert set(woken) == {"hook"}  # (a shared store also hears its own NOTIFY)
    [again] = await store.claim("hook", T0 + 3, 10, fifo=False)
    assert (again.id, again.attempts) == (dead.id, 0)  # a fresh retry budget
    assert await store.retry_delivery(dead.id, T0 + 3) is False  # in flight now


async def test_replay_queues_the_same_notifications_again(store: Store) -> None:
    notes = [note(T0 + i) for i in range(4)]
    await add(store, notes, ["hook"])
    claimed = await store.claim("hook", T0 + 4, 10, fifo=False)
    await store.record_outcomes(
        [Outcome(d.id, DeliveryState.DELIVERED, 1) for d in claimed], T0 + 5
    )
    woken: list[str] = []
    store.subscribe("hook", lambda: woken.append("hook"))

    assert await store.replay("hook", T0 + 1, T0 + 2, now=T0 + 10) == 2  # bounds inclusive
    assert set(woken) == {"hook"}  # (a shared store also hears its own NOTIFY)
    # Already queued again: a second replay does not double them.
    assert await store.replay("hook", T0 + 1, T0 + 2, now=T0 + 10) == 0
    assert await store.replay("hook", T0 + 50, T0 + 60, now=T0 + 10) == 0
    assert set(woken) == {"hook"}  # (a shared store also hears its own NOTIFY)
    replayed = await store.claim("hook", T0 + 10, 10, fifo=False)
    assert [d.notification_id for d in replayed] == [notes[1].id, notes[2].id]
    assert all(d.id > max(c.id for c in claimed) for d in replayed)
    # Only what was routed to a target is replayed to it (its filter applied).
    assert await store.replay("never-routed", T0, T0 + 3, now=T0 + 10) == 0
    assert await store.count_notifications() == 4


async def test_list_deliveries_pages_cover_every_row_once(store: Store) -> None:
    await add(store, [note(T0 + i) for i in range(12)], ["hook", "slack"])
    claimed = await store.claim("hook", T0 + 12, 5, fifo=False)
    await store.record_outcomes(
        [Outcome(d.id, DeliveryState.DEAD, 3) for d in claimed[:3]], T0 + 13
    )
    everything, _ = await store.list_deliveries(limit=1000)
    assert len(everything) == 24
    assert [r.id for r in everything] == sorted((r.id for r in everything), reverse=True)

    filters: list[dict[str, Any]] = [
        {},
        {"target": "hook"},
        {"state": DeliveryState.DEAD},
        {"state": DeliveryState.PENDING, "target": "hook"},
        {"state": DeliveryState.IN_FLIGHT},
        {"target": "nobody"},
    ]
    for f, limit in itertools.product(filters, (1, 5, 12)):
        expected = [
            r.id
            for r in everything
            if r.target == f.get("target", r.target) and r.state == f.get("state", r.state)
        ]
        seen: list[int] = []
        cursor: str | None = None
        while True:
            page, cursor = await store.list_deliveries(limit=limit, cursor=cursor, **f)
            assert 0 < len(page) <= limit or not expected  # never an empty last page
            seen += [r.id for r in page]
            if cursor is None:
                break
        assert seen == expected, (f, limit)
    assert {r.type for r in everything} == {"event.created"}
    with pytest.raises(ValueError, match="cursor"):
        await store.list_deliveries(cursor="abc")


async def test_queue_counts_and_notification_counts(store: Store) -> None:
    await add(store, [note(T0 + i) for i in range(4)], ["hook"])
    await add(store, [note(T0 + 5, "clip.requested")], ["hook", "slack"])
    a, b, _in_flight = await store.claim("hook", T0 + 5, 3, fifo=False)
    await store.record_outcomes(
        [Outcome(a.id, DeliveryState.DEAD, 1), Outcome(b.id, DeliveryState.DELIVERED, 1)], T0
    )
    store.subscribe("mqtt", lambda: None)  # a running dispatcher with an empty queue
    assert await store.queue_counts() == {
        "hook": {"pending": 2, "in_flight": 1, "dead": 1},
        "slack": {"pending": 1, "in_flight": 0, "dead": 0},
        "mqtt": {"pending": 0, "in_flight": 0, "dead": 0},
    }
    assert await store.count_notifications() == 5
    assert await store.count_notifications("clip.requested") == 1
    assert await store.count_notifications("report.safety") == 0


async def test_prune_deletes_in_batches_until_done(store: Store) -> None:
    await add(store, [note(T0 + i / 100) for i in range(2100)], [])
    assert await store.count_notifications() == 2100
    assert await store.prune(older_than=T0 + 100) == 2100
    assert await store.count_notifications() == 0


async def test_a_value_the_store_cannot_take_is_rejected_not_an_outage(store: Store) -> None:
    async def bad(tx: IngestTx) -> None:
        await tx.put_json("clip", "task", {"note": f"Jo{chr(0xD800)}e"})  # a lone surrogate

    with pytest.raises(StoreRejected):
        await store.ingest(bad)
    assert await store.get_json("clip", "task") is None
    await store.ping()  # still answering: the data was refused, not the store down
