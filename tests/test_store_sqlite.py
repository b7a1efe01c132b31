"""The SQLite store on real files: migrations, the ingest transaction, claims, outcomes,
operations and retention. No mocks; time is passed in explicitly or via FakeClock."""

from __future__ import annotations

import asyncio
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
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import AlreadyRunning, SqliteStore, split_statements

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
    assert isinstance(
        open_store(StoreSettings(url="postgresql://db/bridge"), fake_clock), PostgresStore
    )


async def test_a_second_run_on_the_same_file_is_refused(
    db_path: Path, fake_clock: FakeClock
) -> None:
    first = SqliteStore(db_path, fake_clock, exclusive=True)
    await first.open()
    try:
        with pytest.raises(
            AlreadyRunning, match=f"already running on the SQLite database {db_path}"
        ):
            await SqliteStore(db_path, fake_clock, exclusive=True).open()
        visitor = SqliteStore(db_path, fake_clock)  # `replay` only visits the file
        await visitor.open()
        await visitor.close()
    finally:
        await first.close()
    again = SqliteStore(db_path, fake_clock, exclusive=True)  # released on close
    await again.open()
    await again.close()


# -- ingest --------------------------------------------------------------------------------


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


@pytest.mark.parametrize("fifo", [False, True])
async def test_claim_uses_notification_key(store: SqliteStore, db_path: Path, fifo: bool) -> None:
    # The claim reads each body through a subquery in RETURNING; without the CAST
    # there SQLite scans the whole notifications table once per claimed row.
    query = sqlite_sql.CLAIM_FIFO if fifo else sqlite_sql.CLAIM
    params = {"target": "hook", "now": T0, "lease": T0 + 30, "limit": 10, "token": "t"}
    plan = [row[3] for row in raw(db_path, "EXPLAIN QUERY PLAN " + query, params)]
    lookups = [step for step in plan if step.startswith(("SCAN n", "SEARCH n "))]
    assert len(lookups) == 3
    assert all("USING INDEX sqlite_autoindex_notifications_1 (id=?)" in s for s in lookups)


# -- outcomes ---------------------------------------------------------------------------------


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


# -- operations -------------------------------------------------------------------------------


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


async def test_state_survives_close_and_reopen(db_path: Path, fake_clock: FakeClock) -> None:
    first = SqliteStore(db_path, fake_clock)
    await first.open()
    n = note()

    async def fn(tx: IngestTx) -> None:
        await tx.add_notifications([NewNotification(n, ["hook"])])
        await tx.set_cursor("events", T0)
        await tx.put_json("slack_thread", "tk", {"ts": "1.2"})

    await first.ingest(fn)
    [d] = await first.claim("hook", T0, 1, fifo=False)
    await first.set_target_state("hook", TargetState(paused=True, paused_reason="gone"))
    await first.close()

    second = SqliteStore(db_path, fake_clock)
    await second.open()
    try:
        assert await second.get_cursor("events") == T0
        assert await second.get_json("slack_thread", "tk") == {"ts": "1.2"}
        assert (await second.get_target_state("hook")).paused is True
        assert await second.queue_counts() == {"hook": {"pending": 0, "in_flight": 1, "dead": 0}}
        assert await second.recover() == 1
        await second.resume_target("hook")
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
