"""The SQLite store on real files: migrations, the ingest transaction, claims, outcomes,
operations and retention. No mocks; time is passed in explicitly or via FakeClock."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.clock import FakeClock
from bridge.notifications import Notification, build_notification
from bridge.settings import StoreSettings
from bridge.store import open_store, sqlite_sql
from bridge.store.base import (
    DeliveryState,
    IngestTx,
    NewNotification,
    Outcome,
    SeenTicket,
    StoreUnavailable,
    TargetState,
)
from bridge.store.migrate import load_migrations
from bridge.store.sqlite import SqliteStore, split_statements

T0 = 1_764_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "bridge.db"  # the parent does not exist yet


@pytest.fixture
async def store(db_path: Path, fake_clock: FakeClock) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(db_path, fake_clock, lease_s=30.0)
    await s.open()
    yield s
    await s.close()


def note(at: float = T0, type_: str = "event.created", **data: Any) -> Notification:
    payload = {"ticket": f"t-{at}", "occurred_at": "2025-11-24T16:00:00Z", **data}
    return build_notification(type_, payload, base_url="https://fleet.example.com", now=at)


async def add(store: SqliteStore, notes: Sequence[Notification], targets: Sequence[str]) -> None:
    async def fn(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(n, targets) for n in notes])

    await store.ingest(fn)


def raw(db_path: Path, query: str, params: Sequence[Any] = ()) -> list[Any]:
    """Read the file through a second, independent connection (sees only commits)."""
    with sqlite3.connect(db_path) as conn:
        return conn.execute(query, params).fetchall()


# -- migrations and connection -----------------------------------------------------------

MIGRATIONS = load_migrations("sqlite")


async def test_open_creates_directory_wal_file_and_records_schema_version(
    store: SqliteStore, db_path: Path
) -> None:
    assert db_path.exists()
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db_path, "SELECT version, name FROM schema_version ORDER BY version") == [
        (m.version, m.name) for m in MIGRATIONS
    ]
    assert MIGRATIONS[0].name == "init"
    tables = {r[0] for r in raw(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "notifications",
        "deliveries",
        "seen_tickets",
        "cursors",
        "kv",
        "target_state",
    } <= tables


async def test_reopen_applies_nothing_twice_and_keeps_data(
    db_path: Path, fake_clock: FakeClock
) -> None:
    first = SqliteStore(db_path, fake_clock)
    await first.open()
    await add(first, [note()], ["hook"])
    await first.close()
    second = SqliteStore(db_path, fake_clock)
    await second.open()
    try:
        assert raw(db_path, "SELECT count(*) FROM schema_version") == [(len(MIGRATIONS),)]
        assert await second.count_notifications() == 1
    finally:
        await second.close()


async def test_two_processes_opening_at_once_migrate_once(
    db_path: Path, fake_clock: FakeClock
) -> None:
    a, b = SqliteStore(db_path, fake_clock), SqliteStore(db_path, fake_clock)
    await asyncio.gather(a.open(), b.open())
    try:
        versions = raw(db_path, "SELECT version FROM schema_version ORDER BY version")
        assert versions == [(m.version,) for m in MIGRATIONS]
        await add(a, [note()], ["hook"])
        assert await b.count_notifications() == 1
    finally:
        await asyncio.gather(a.close(), b.close())


async def test_a_newer_schema_is_refused(db_path: Path, fake_clock: FakeClock) -> None:
    s = SqliteStore(db_path, fake_clock)
    await s.open()
    await s.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future', 0)")
    with pytest.raises(StoreUnavailable, match="newer than this release"):
        await SqliteStore(db_path, fake_clock).open()


def test_migration_files_are_numbered_from_one() -> None:
    migrations = load_migrations("sqlite")
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert all(split_statements(m.sql) for m in migrations)


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x);
    CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO a VALUES (1); END;
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].endswith("END;")
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("CREATE TABLE b (x)")


async def test_unusable_path_is_store_unavailable(tmp_path: Path, fake_clock: FakeClock) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        await SqliteStore(tmp_path / "file" / "bridge.db", fake_clock).open()


async def test_ping_answers_while_open_and_fails_after_close(store: SqliteStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_cursor("events")


async def test_open_store_matches_on_the_url_kind(tmp_path: Path, fake_clock: FakeClock) -> None:
    store = open_store(StoreSettings(url=f"sqlite:///{tmp_path}/x.db"), fake_clock)
    assert isinstance(store, SqliteStore)
    with pytest.raises(NotImplementedError, match="PostgreSQL"):
        open_store(StoreSettings(url="postgresql://db/bridge"), fake_clock)


# -- ingest --------------------------------------------------------------------------------


async def test_ingest_commits_everything_together(store: SqliteStore, db_path: Path) -> None:
    n = note(ticket="tk-1")
    seen = SeenTicket("tk-1", 1, {"has_video": True}, first_seen_at=T0, updated_at=T0)

    async def fn(tx: IngestTx) -> str:
        assert await tx.seen_tickets(["tk-1"]) == {}
        await tx.put_tickets([seen])
        await tx.add_notifications([NewNotification(n, ["hook", "slack", "hook"])])
        await tx.set_cursor("events", T0 - 5)
        await tx.put_json("clip", "task-1", {"state": "upcoming"})
        assert await tx.get_json("clip", "task-1") == {"state": "upcoming"}
        return "done"

    assert await store.ingest(fn) == "done"
    assert await store.get_cursor("events") == T0 - 5
    assert await store.get_json("clip", "task-1") == {"state": "upcoming"}
    assert await store.list_json("clip") == [("task-1", {"state": "upcoming"})]
    # A duplicate target in one item still makes one delivery.
    assert raw(db_path, "SELECT target FROM deliveries ORDER BY id") == [("hook",), ("slack",)]
    assert raw(db_path, "SELECT body FROM notifications") == [(n.body,)]

    async def read(tx: IngestTx) -> dict[str, SeenTicket]:
        return await tx.seen_tickets(["tk-1", "tk-unknown"])

    assert await store.ingest(read) == {"tk-1": seen}


async def test_ingest_that_raises_stores_nothing(store: SqliteStore, db_path: Path) -> None:
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
    assert raw(db_path, "SELECT count(*) FROM seen_tickets") == [(0,)]
    assert raw(db_path, "SELECT count(*) FROM deliveries") == [(0,)]


async def test_a_cancelled_ingest_rolls_back_and_frees_the_store(store: SqliteStore) -> None:
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


async def test_put_tickets_keeps_the_first_sighting(store: SqliteStore) -> None:
    async def put(tx: IngestTx) -> None:
        await tx.put_tickets([SeenTicket("tk", 1, {"v": 1}, T0, T0)])

    async def update(tx: IngestTx) -> None:
        await tx.put_tickets([SeenTicket("tk", 2, {"v": 2}, T0 + 50, T0 + 50)])

    async def read(tx: IngestTx) -> dict[str, SeenTicket]:
        return await tx.seen_tickets(["tk"])

    await store.ingest(put)
    await store.ingest(update)
    assert (await store.ingest(read))["tk"] == SeenTicket("tk", 2, {"v": 2}, T0, T0 + 50)


async def test_wake_fires_after_commit_only_for_targets_with_new_rows(
    store: SqliteStore, db_path: Path
) -> None:
    visible_at_wake: dict[str, int] = {}

    def waker(target: str) -> Callable[[], None]:
        def wake() -> None:
            # A second connection sees the rows only once they are committed.
            visible_at_wake[target] = raw(
                db_path, "SELECT count(*) FROM deliveries WHERE target = ?", (target,)
            )[0][0]

        return wake

    for target in ("hook", "slack", "mqtt"):
        store.subscribe(target, waker(target))

    async def failing(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(note(), ["hook"])])
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await store.ingest(failing)
    assert visible_at_wake == {}

    await add(store, [note(T0), note(T0 + 1)], ["hook", "slack"])
    assert visible_at_wake == {"hook": 2, "slack": 2}


async def test_the_transaction_cannot_outlive_ingest_or_reenter_the_store(
    store: SqliteStore,
) -> None:
    kept: list[IngestTx] = []

    async def keep(tx: IngestTx) -> None:
        kept.append(tx)

    await store.ingest(keep)
    with pytest.raises(RuntimeError, match="over"):
        await kept[0].set_cursor("events", T0)

    async def reenter(tx: IngestTx) -> None:
        await store.get_cursor("events")

    with pytest.raises(RuntimeError, match="inside ingest"):
        await asyncio.wait_for(store.ingest(reenter), timeout=5)
    await store.ping()  # the lock was released


# -- claim -----------------------------------------------------------------------------------


async def test_claim_returns_due_rows_oldest_first_up_to_limit(store: SqliteStore) -> None:
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


async def test_claim_skips_rows_not_yet_due(store: SqliteStore) -> None:
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


async def test_an_expired_lease_is_claimed_again(store: SqliteStore) -> None:
    await add(store, [note()], ["hook"])
    [d] = await store.claim("hook", T0, 10, fifo=False)
    assert await store.next_due_at("hook", fifo=False) == T0 + 30  # lease_s=30
    assert await store.claim("hook", T0 + 30, 10, fifo=False) == []
    [again] = await store.claim("hook", T0 + 31, 10, fifo=False)
    assert (again.id, again.attempts) == (d.id, 0)


async def test_concurrent_claims_never_hand_out_a_row_twice(store: SqliteStore) -> None:
    await add(store, [note(T0 + i) for i in range(100)], ["hook"])
    batches = await asyncio.gather(
        *(store.claim("hook", T0 + 100, 7, fifo=False) for _ in range(20))
    )
    ids = [d.id for batch in batches for d in batch]
    assert len(ids) == len(set(ids)) == 100


@pytest.mark.parametrize("fifo", [False, True])
async def test_claim_uses_notification_key(store: SqliteStore, db_path: Path, fifo: bool) -> None:
    # The claim reads each body through a subquery in RETURNING; without the CAST
    # there SQLite scans the whole notifications table once per claimed row.
    query = sqlite_sql.CLAIM_FIFO if fifo else sqlite_sql.CLAIM
    params = {"target": "hook", "now": T0, "lease": T0 + 30, "limit": 10}
    plan = [row[3] for row in raw(db_path, "EXPLAIN QUERY PLAN " + query, params)]
    lookups = [step for step in plan if step.startswith(("SCAN n", "SEARCH n "))]
    assert len(lookups) == 3
    assert all("USING INDEX sqlite_autoindex_notifications_1 (id=?)" in s for s in lookups)


async def test_fifo_head_of_line_blocks_the_rest(store: SqliteStore) -> None:
    notes = [note(T0 + i) for i in range(3)]
    await add(store, notes, ["hook"])
    [head] = await store.claim("hook", T0 + 5, 10, fifo=True)
    assert head.notification_id == notes[0].id
    assert await store.claim("hook", T0 + 5, 10, fifo=True) == []  # head in flight
    assert await store.next_due_at("hook", fifo=True) == T0 + 5 + 30  # its lease

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


# -- outcomes ---------------------------------------------------------------------------------


async def test_record_outcomes_sets_each_state(store: SqliteStore) -> None:
    await add(store, [note(T0 + i) for i in range(3)], ["hook"])
    ok, retry, dead = await store.claim("hook", T0 + 3, 10, fifo=False)
    await store.record_outcomes(
        [
            Outcome(ok.id, DeliveryState.DELIVERED, 1, status=200),
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


async def test_a_late_outcome_does_not_reopen_a_finished_row(store: SqliteStore) -> None:
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


async def test_recover_releases_in_flight_rows(store: SqliteStore) -> None:
    woken: list[str] = []
    store.subscribe("hook", lambda: woken.append("hook"))
    await add(store, [note(T0), note(T0 + 1), note(T0 + 2)], ["hook"])
    woken.clear()
    claimed = await store.claim("hook", T0 + 2, 2, fifo=False)
    assert await store.recover() == 2
    assert woken == ["hook"]
    again = await store.claim("hook", T0 + 2, 10, fifo=False)
    assert len(again) == 3
    assert [d.id for d in again[:2]] == [d.id for d in claimed]
    assert all(d.attempts == 0 for d in again)  # the interrupted attempt is not counted
    assert await store.recover() == 3


async def test_target_state_round_trips(store: SqliteStore) -> None:
    assert await store.get_target_state("hook") == TargetState()
    paused = TargetState(paused=True, paused_reason="410 Gone", hold_until=T0 + 9)
    await store.set_target_state("hook", paused)
    assert await store.get_target_state("hook") == paused
    await store.set_target_state("hook", TargetState())
    assert await store.get_target_state("hook") == TargetState()
    failing = TargetState(failures=7, probe_at=T0 + 4)
    await store.set_target_state("hook", failing)
    assert await store.get_target_state("hook") == failing
    assert failing.failing
    assert not TargetState().failing


async def test_probe_claims_the_oldest_pending_row_due_or_not(store: SqliteStore) -> None:
    await add(store, [note(T0), note(T0 + 1), note(T0 + 2)], ["hook", "other"])
    first, second, third = await store.claim("hook", T0, 10, fifo=False)
    later = [
        Outcome(d.id, DeliveryState.PENDING, 1, 503, "down", T0 + 1000)
        for d in (first, second, third)
    ]
    await store.record_outcomes(later, T0)
    assert await store.claim("hook", T0 + 10, 10, fifo=False) == []
    probe = await store.claim_probe("hook", T0 + 10)
    assert probe is not None
    assert (probe.id, probe.attempts) == (first.id, 1)
    # The other target's rows are untouched; the probe row is in flight now.
    assert await store.claim_probe("hook", T0 + 10) is not None
    assert (await store.claim_probe("hook", T0 + 10)) is not None
    assert await store.claim_probe("hook", T0 + 10) is None
    await store.record_outcomes(later, T0)
    woken: list[str] = []
    store.subscribe("hook", lambda: woken.append("hook"))
    assert await store.release_waiting("hook", T0 + 20) == 3
    assert woken == ["hook"]
    assert len(await store.claim("hook", T0 + 20, 10, fifo=False)) == 3
    assert (await store.queue_counts())["other"]["pending"] == 3


async def test_expire_pending_dead_letters_only_old_pending_rows_of_one_target(
    store: SqliteStore, fake_clock: FakeClock
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


# -- operations -------------------------------------------------------------------------------


async def test_retry_delivery_requeues_only_dead_rows(store: SqliteStore) -> None:
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
    assert woken == ["hook"]
    [again] = await store.claim("hook", T0 + 3, 10, fifo=False)
    assert (again.id, again.attempts) == (dead.id, 0)  # a fresh retry budget
    assert await store.retry_delivery(dead.id, T0 + 3) is False  # in flight now


async def test_replay_queues_the_same_notifications_again(store: SqliteStore) -> None:
    notes = [note(T0 + i) for i in range(4)]
    await add(store, notes, ["hook"])
    claimed = await store.claim("hook", T0 + 4, 10, fifo=False)
    await store.record_outcomes(
        [Outcome(d.id, DeliveryState.DELIVERED, 1) for d in claimed], T0 + 5
    )
    woken: list[str] = []
    store.subscribe("hook", lambda: woken.append("hook"))

    assert await store.replay("hook", T0 + 1, T0 + 2, now=T0 + 10) == 2  # bounds inclusive
    assert woken == ["hook"]
    # Already queued again: a second replay does not double them.
    assert await store.replay("hook", T0 + 1, T0 + 2, now=T0 + 10) == 0
    assert await store.replay("hook", T0 + 50, T0 + 60, now=T0 + 10) == 0
    assert woken == ["hook"]
    replayed = await store.claim("hook", T0 + 10, 10, fifo=False)
    assert [d.notification_id for d in replayed] == [notes[1].id, notes[2].id]
    assert all(d.id > max(c.id for c in claimed) for d in replayed)
    # Only what was routed to a target is replayed to it (its filter applied).
    assert await store.replay("never-routed", T0, T0 + 3, now=T0 + 10) == 0
    assert await store.count_notifications() == 4


async def test_list_deliveries_pages_cover_every_row_once(store: SqliteStore) -> None:
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


async def test_queue_counts_and_notification_counts(store: SqliteStore) -> None:
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


# -- retention --------------------------------------------------------------------------------


async def test_prune_keeps_pending_work_and_recent_rows(
    store: SqliteStore, db_path: Path, fake_clock: FakeClock
) -> None:
    finished = [note(T0 + i) for i in range(3)]
    await add(store, finished, ["hook", "slack"])
    unfinished = note(T0 + 3)
    await add(store, [unfinished], ["hook", "slack"])
    recent = note(T0 + 1000)
    await add(store, [recent], ["hook"])

    async def remember(tx: IngestTx) -> None:
        await tx.put_tickets(
            [SeenTicket("old", 1, {}, T0, T0), SeenTicket("new", 1, {}, T0, T0 + 1000)]
        )
        await tx.put_json("clip", "old-task", {"state": "success"})

    await store.ingest(remember)  # written at the fake clock's T0
    fake_clock.advance(1000)

    async def fresh(tx: IngestTx) -> None:
        await tx.put_json("clip", "new-task", {"state": "upcoming"})

    await store.ingest(fresh)

    claimed = await store.claim("hook", T0 + 4, 10, fifo=False)
    claimed += await store.claim("slack", T0 + 4, 10, fifo=False)
    outcomes = [
        Outcome(d.id, DeliveryState.DEAD if d.target == "slack" else DeliveryState.DELIVERED, 1)
        for d in claimed
        if d.notification_id != unfinished.id or d.target == "hook"
    ]  # `unfinished` keeps its slack delivery in flight
    await store.record_outcomes(outcomes, T0 + 5)

    deleted = await store.prune(older_than=T0 + 500)
    # 3 notifications + their 6 deliveries + 1 ticket + 1 kv row
    assert deleted == 3 + 6 + 1 + 1
    remaining = {r[0] for r in raw(db_path, "SELECT id FROM notifications")}
    assert remaining == {unfinished.id, recent.id}
    assert raw(db_path, "SELECT count(*) FROM deliveries") == [(3,)]
    assert raw(db_path, "SELECT ticket FROM seen_tickets") == [("new",)]
    assert await store.list_json("clip") == [("new-task", {"state": "upcoming"})]
    assert await store.prune(older_than=T0 + 500) == 0


async def test_prune_deletes_in_batches_until_done(store: SqliteStore) -> None:
    await add(store, [note(T0 + i / 100) for i in range(2100)], [])
    assert await store.count_notifications() == 2100
    assert await store.prune(older_than=T0 + 100) == 2100
    assert await store.count_notifications() == 0


async def test_state_survives_close_and_reopen(db_path: Path, fake_clock: FakeClock) -> None:
    first = SqliteStore(db_path, fake_clock)
    await first.open()
    n = note()

    async def fn(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(n, ["hook"])])
        await tx.set_cursor("events", T0)
        await tx.put_json("slack_thread", "tk", {"ts": "1.2"})

    await first.ingest(fn)
    await first.set_target_state("hook", TargetState(paused=True, paused_reason="gone"))
    [d] = await first.claim("hook", T0, 1, fifo=False)
    await first.close()

    second = SqliteStore(db_path, fake_clock)
    await second.open()
    try:
        assert await second.get_cursor("events") == T0
        assert await second.get_json("slack_thread", "tk") == {"ts": "1.2"}
        assert (await second.get_target_state("hook")).paused is True
        assert await second.queue_counts() == {"hook": {"pending": 0, "in_flight": 1, "dead": 0}}
        assert await second.recover() == 1
        [again] = await second.claim("hook", T0, 1, fifo=False)
        assert (again.id, again.body) == (d.id, n.body)
    finally:
        await second.close()


async def test_a_notification_is_stored_once(store: SqliteStore, db_path: Path) -> None:
    # Issue #9 (store growth): ticket and device_cid repeated the body and were never
    # read; the type index served only a count. bench/store_size.py measures the rest.
    columns = {row[1] for row in raw(db_path, "PRAGMA table_info(notifications)")}
    assert columns == {"id", "type", "created_at", "event_at", "body"}
    indexes = {row[1] for row in raw(db_path, "PRAGMA index_list(notifications)")}
    assert "notifications_type" not in indexes
    n = note()
    await add(store, [n], ["hook"])
    assert raw(db_path, "SELECT body FROM notifications") == [(n.body,)]
    assert await store.count_notifications("event.created") == 1
