"""The SQLite store: the embedded default (SPEC §9), one file in WAL mode.

One aiosqlite connection does all the I/O on its own thread, so the event loop
never blocks on disk. An `asyncio.Lock` serializes callers: a transaction (an
ingest, a claim, a batch of outcomes) never interleaves with another caller's
statements on the shared connection, and reads never see uncommitted writes.

Every `sqlite3.Error` or `OSError` leaves this module as `StoreUnavailable`; a value
SQLite cannot take (unencodable text, an int past 64 bits) as `StoreRejected`.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from bridge.clock import Clock
from bridge.store import sqlite_sql as sql
from bridge.store import storm_sql
from bridge.store.base import (
    Delivery,
    DeliveryRecord,
    DeliveryState,
    IngestFn,
    Lease,
    Outcome,
    ShareClaim,
    StoreRejected,
    StoreUnavailable,
    TargetState,
    TicketConflict,
    after_failure,
    decode_cursor,
    encode_cursor,
)
from bridge.store.migrate import Migration, load_migrations, migrate
from bridge.store.rows import delivery_from_row, outcome_values, record_from_row, zero_counts
from bridge.store.sqlite_ingest import SqliteIngestTx, get_json
from bridge.store.storm_tx import StormTx

log = structlog.get_logger(__name__)
T = TypeVar("T")

_PRUNE_BATCH = 2000  # notifications per prune transaction, so dispatch is never stalled long
CLAIM_S = 30.0  # SPEC §9: a dead claimer's deliveries are taken over within 60 s
INGEST_ATTEMPTS = 5  # re-runs of an ingest after a TicketConflict


class AlreadyRunning(StoreUnavailable):
    """Another `fleet-bridge run` owns this SQLite file."""


class SqliteStore:
    """`Store` on one SQLite file."""

    shared = False  # one process: rate budget and in-flight cap stay in memory

    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        *,
        lease_s: float = CLAIM_S,
        busy_timeout_s: float = 5.0,
        exclusive: bool = False,
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        # A claim is reclaimable after the lease: only a crashed or wedged sender
        # holds a row that long (targets time out far sooner).
        self._lease_s = lease_s
        # `run` owns the file (SPEC §9: one process); `replay` only visits it.
        self._exclusive = exclusive
        self._lock_fd: int | None = None
        self._fence: tuple[str, int] | None = None
        # Another process (`fleet-bridge replay`) may hold the write lock briefly.
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[Any] | None = None
        self._subscribers: dict[str, list[Callable[[], None]]] = {}

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (and its directory) if needed, configure it, migrate it."""
        if self._db is not None:
            return
        try:
            await asyncio.to_thread(self._path.parent.mkdir, parents=True, exist_ok=True)
            if self._exclusive:
                self._lock_fd = await asyncio.to_thread(_lock_file, self._path)
            migrations = await asyncio.to_thread(load_migrations, "sqlite")
            # Probe with plain sqlite3 first: when aiosqlite's connect fails, its worker
            # thread outlives the failure and dies with a traceback once the loop closes.
            await asyncio.to_thread(_probe, self._path)
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except (sqlite3.Error, OSError) as err:
            self._unlock()
            raise StoreUnavailable(f"cannot open SQLite database {self._path}: {err}") from err
        try:
            await _configure(db, self._busy_timeout_ms)
            applied = await migrate(_SqliteMigrations(db, self._clock), migrations)
        except (sqlite3.Error, OSError) as err:
            await _close_quietly(db)
            self._unlock()
            raise StoreUnavailable(f"cannot prepare SQLite database {self._path}: {err}") from err
        except BaseException:
            await _close_quietly(db)
            self._unlock()
            raise
        if applied:
            log.info("store migrated", path=str(self._path), versions=applied)
        self._db = db

    async def close(self) -> None:
        """Close the connection after the running operation (if any) finishes."""
        self._check_reentry("close")
        async with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                await db.close()
            except (sqlite3.Error, OSError) as err:
                raise StoreUnavailable(f"closing SQLite database failed: {err}") from err
            finally:
                self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless a trivial query on the database answers."""
        async with self._session("ping") as db:
            # Reads a table, not just `SELECT 1`, so a broken file is noticed.
            await db.execute_fetchall("SELECT 1 FROM schema_version LIMIT 1")

    # -- plumbing ------------------------------------------------------------------

    def _check_reentry(self, what: str) -> None:
        if self._owner is not None and self._owner is asyncio.current_task():
            # asyncio.Lock is not reentrant: this would deadlock, so fail loudly.
            raise RuntimeError(f"store.{what}() called inside ingest(); use the transaction")

    @asynccontextmanager
    async def _session(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """Exclusive use of the connection; SQLite and OS errors become StoreUnavailable."""
        self._check_reentry(what)
        async with self._lock:
            if self._db is None:
                raise StoreUnavailable("the SQLite store is closed")
            self._owner = asyncio.current_task()
            try:
                yield self._db
            except (UnicodeError, OverflowError, sqlite3.DataError) as err:
                # A value SQLite cannot take (unencodable text, an int past 64 bits).
                raise StoreRejected(f"SQLite {what} refused a value: {err}") from err
            except (sqlite3.Error, OSError) as err:
                raise StoreUnavailable(f"SQLite {what} failed: {err}") from err
            finally:
                self._owner = None

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        async with self._session(what) as db:
            # BEGIN and COMMIT sit inside the try: if either is cancelled or fails,
            # the rollback still runs (after them, on the same thread), so the shared
            # connection is never left inside a stale transaction.
            try:
                # IMMEDIATE takes the write lock up front, so a writer in another
                # process makes us wait (busy_timeout) instead of failing at COMMIT
                # with SQLITE_BUSY after the work is done.
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.commit()
            except BaseException:
                await _rollback(db)
                raise

    def _wake(self, targets: Iterable[str]) -> None:
        for target in targets:
            for wake in self._subscribers.get(target, ()):
                try:
                    wake()
                except Exception:  # one broken subscriber must not undo a committed ingest
                    log.exception("store wake callback failed", target=target)

    # -- ingest ------------------------------------------------------------------

    async def ingest(self, fn: IngestFn) -> Any:
        """Run `fn(tx)` in one transaction; wake the targets that got deliveries after commit.

        `fn` holds the store for its whole run: it should only compute and use `tx`,
        never wait on the network or call other store methods.
        """
        for attempt in range(1, INGEST_ATTEMPTS + 1):
            try:
                async with self._transaction("ingest") as db:
                    tx = SqliteIngestTx(db, self._clock, self._fence, lease_s=self._lease_s)
                    try:
                        result = await fn(tx)
                    finally:
                        tx.close()
            except TicketConflict:
                if attempt == INGEST_ATTEMPTS:
                    raise
                continue
            self._wake(tx.targets)
            return result
        raise AssertionError("unreachable")

    def set_fence(self, holder: str, epoch: int) -> None:
        """Fence cursor writes by this lease from now on."""
        self._fence = (holder, epoch)

    async def get_cursor(self, job: str) -> float | None:
        """A poller's cursor, or None before its first run."""
        async with self._session("get_cursor") as db:
            rows = list(await db.execute_fetchall(sql.GET_CURSOR, (job,)))
        return float(rows[0][0]) if rows else None

    async def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        """Keyed state outside a transaction."""
        async with self._session("get_json") as db:
            return await get_json(db, kind, key)

    async def list_json(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """All keyed state of one kind, by key."""
        async with self._session("list_json") as db:
            rows = await db.execute_fetchall(sql.LIST_JSON, (kind,))
        return [(str(key), json.loads(value)) for key, value in rows]

    # -- dispatch ----------------------------------------------------------------

    def subscribe(self, target: str, wake: Callable[[], None]) -> None:
        """Call `wake()` after every commit that adds (or re-queues) deliveries for `target`."""
        self._subscribers.setdefault(target, []).append(wake)

    async def recover(self) -> int:
        """Release every `in_flight` row to pending; the interrupted attempt is not counted.

        Only one process runs on a SQLite file (`exclusive`), so every claim found
        at start-up belongs to a process that is gone.
        """
        async with self._session("recover") as db:
            rows = list(await db.execute_fetchall(sql.RECOVER, (self._clock.now(),)))
        self._wake({str(row[0]) for row in rows})
        return len(rows)

    async def claim(
        self,
        target: str,
        now: float,
        limit: int,
        *,
        fifo: bool,
        max_in_flight: int | None = None,
    ) -> list[Delivery]:
        """Mark up to `limit` due deliveries in flight (one, the head, with `fifo`)."""
        if limit < 1:
            return []
        token = uuid.uuid4().hex
        lease = now + self._lease_s
        async with self._session("claim") as db:
            # The connection is ours until the session ends, so the checks and the
            # claim below see one state of the file. (The claim checks paused, held
            # and failing itself; this earlier look only spares the cap's count.)
            if max_in_flight is not None:
                if list(await db.execute_fetchall(sql.TARGET_BLOCKED, (target, now))):
                    return []
                [(live,)] = list(await db.execute_fetchall(sql.LIVE_CLAIMS, (target, now)))
                limit = min(limit, max_in_flight - int(live))
                if limit < 1:
                    return []
            params = {"target": target, "now": now, "lease": lease, "limit": limit}
            params["token"] = token
            # One UPDATE … RETURNING is atomic on its own, so even another process
            # claiming from the same file cannot take the same row.
            rows = await db.execute_fetchall(sql.CLAIM_FIFO if fifo else sql.CLAIM, params)
        # RETURNING yields rows in no defined order; senders expect creation order.
        return [delivery_from_row(row, token, lease) for row in sorted(rows, key=itemgetter(0))]

    async def claim_share(
        self,
        target: str,
        now: float,
        limit: int,
        *,
        max_in_flight: int,
        replica: str,
        sending: int,
        queued: int,
        outcomes: Sequence[Outcome] = (),
    ) -> ShareClaim:
        """See `Store.claim_share`: one process sends from this file, so the share is
        the whole cap."""
        await self.record_outcomes(outcomes, now)
        claimed = await self.claim(target, now, limit, fifo=False)
        return ShareClaim(claimed, max_in_flight, now + self._lease_s, max_in_flight)

    async def target_failed(
        self,
        target: str,
        now: float,
        *,
        probe: bool,
        failing_after: int,
        probe_delay: Callable[[int], float],
    ) -> tuple[TargetState, bool]:
        """Count one transient failure for the target as a whole (see `Store.target_failed`)."""
        async with self._transaction("target_failed") as db:
            state = await _target_state(db, target)
            changed = after_failure(
                state, now, probe=probe, failing_after=failing_after, probe_delay=probe_delay
            )
            if changed is None:
                return state, False
            state, started = changed
            await db.execute(sql.ENSURE_TARGET_STATE, (target, now))
            await db.execute(sql.SET_FAILURES, (state.failures, state.probe_at, now, target))
        return state, started

    async def claim_probe(self, target: str, now: float) -> Delivery | None:
        """Claim a failing target's probe when it is due (see `Store.claim_probe`)."""
        token, lease = uuid.uuid4().hex, now + self._lease_s
        params = {"target": target, "now": now, "lease": lease, "token": token}
        async with self._transaction("claim_probe") as db:
            probe_at = (await _target_state(db, target)).probe_at
            if probe_at is None or probe_at > now:
                return None
            rows = list(await db.execute_fetchall(sql.CLAIM_PROBE, params))
            if not rows:
                return None
            # The next probe no earlier than this one's claim expiry (its outcome sets it).
            await db.execute(sql.SET_PROBE_AT, (lease, now, target))
        return delivery_from_row(rows[0], token, lease)

    async def target_recovered(self, target: str, now: float) -> int | None:
        """End a failure streak; a failing target's waiting deliveries become due now."""
        params = {"target": target, "now": now}
        async with self._transaction("target_recovered") as db:
            state = await _target_state(db, target)
            if not state.failures and not state.failing:
                return None
            await db.execute(sql.SET_FAILURES, (0, None, now, target))
            if not state.failing:
                return None
            async with db.execute(sql.RELEASE_WAITING, params) as cur:
                count = int(cur.rowcount)
        self._wake([target])
        return count

    async def expire_pending(self, target: str, created_before: float, now: float) -> int:
        """Dead-letter pending deliveries of `target` queued before `created_before`."""
        params = {
            "target": target,
            "before": created_before,
            "now": now,
            "error": "expired: not delivered within retry.max_age_s",
        }
        async with (
            self._session("expire_pending") as db,
            db.execute(sql.EXPIRE_PENDING, params) as cur,
        ):
            return int(cur.rowcount)

    async def next_due_at(self, target: str, *, fifo: bool) -> float | None:
        """The earliest time a claim of `target` can return something (None if nothing waits).

        Pending rows count from their next attempt, in-flight rows from their lease
        expiry (a crashed sender's row is claimable again then). With `fifo` only
        the head counts.
        """
        async with self._session("next_due_at") as db:
            if fifo:
                rows = list(await db.execute_fetchall(sql.FIFO_HEAD, (target,)))
                if not rows:
                    return None
                state, next_attempt_at, lease_until = rows[0]
                return float(next_attempt_at if state == "pending" else lease_until)
            rows = list(await db.execute_fetchall(sql.NEXT_DUE, (target, target)))
        due = [float(v) for v in rows[0] if v is not None]
        return min(due) if due else None

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> None:
        """Record attempt results in one transaction.

        Only rows still in flight under the outcome's claim are written: a late
        outcome (its claim expired, or the row was claimed again) is ignored.
        """
        rows = [_outcome_row(outcome, now) for outcome in outcomes]
        if not rows:
            return
        async with self._transaction("record_outcomes") as db:
            await db.executemany(sql.RECORD_OUTCOME, rows)

    async def get_target_state(self, target: str) -> TargetState:
        """Pause / hold state of a target (defaults when never set)."""
        async with self._session("get_target_state") as db:
            return await _target_state(db, target)

    async def set_target_state(self, target: str, state: TargetState) -> None:
        """Persist pause / hold / failing state of a target."""
        params = (
            target,
            int(state.paused),
            state.paused_reason,
            state.hold_until,
            state.failures,
            state.probe_at,
        )
        async with self._session("set_target_state") as db:
            await db.execute(sql.SET_TARGET_STATE, (*params, self._clock.now()))

    async def _target_update(self, what: str, query: str, params: tuple[Any, ...]) -> int:
        """Run one UPDATE of a target's state row (created first); rows changed."""
        now = self._clock.now()
        async with self._session(what) as db:
            await db.execute(sql.ENSURE_TARGET_STATE, (params[-1], now))
            async with db.execute(query, params) as cur:
                return int(cur.rowcount)

    async def pause_target(self, target: str, reason: str) -> bool:
        """Pause a target; False if it was paused already."""
        now = self._clock.now()
        return (
            await self._target_update("pause_target", sql.PAUSE_TARGET, (reason, now, target)) > 0
        )

    async def resume_target(self, target: str) -> bool:
        """Un-pause a target and wake its dispatcher; False if it was not paused."""
        now = self._clock.now()
        changed = await self._target_update("resume_target", sql.RESUME_TARGET, (now, target)) > 0
        if changed:
            self._wake([target])
        return changed

    async def hold_target(self, target: str, until: float) -> None:
        """No sends before `until`; a longer hold already set stays."""
        now = self._clock.now()
        await self._target_update("hold_target", sql.HOLD_TARGET, (until, now, target))

    async def reserve_send_slot(self, target: str, now: float, interval_s: float) -> float:
        """The start of this caller's slot; the next one is `interval_s` later."""
        params = {"target": target, "now": now, "interval": interval_s}
        async with self._session("reserve_send_slot") as db:
            await db.execute(sql.ENSURE_TARGET_STATE, (target, self._clock.now()))
            [(slot,)] = list(await db.execute_fetchall(sql.RESERVE_SLOT, params))
        return float(slot)

    async def storm(self, target: str, fn: Callable[[StormTx], Awaitable[T]]) -> T:
        """Run `fn(tx)` in one write transaction (one process: nobody else decides)."""
        async with self._transaction("storm") as db:

            async def fetch(query: str, *args: Any) -> Sequence[Sequence[Any]]:
                return list(await db.execute_fetchall(query, args))

            async def execute(query: str, *args: Any) -> None:
                await db.execute(query, args)

            ingest_tx = SqliteIngestTx(db, self._clock, lease_s=self._lease_s)
            tx = StormTx(target, storm_sql.SQLITE, fetch, execute, ingest_tx.add_notifications)
            try:
                result = await fn(tx)
            finally:
                ingest_tx.close()
        if tx.woken:
            self._wake([target])
        return result

    # -- the poll lease ------------------------------------------------------------

    async def _lease_query(self, what: str, query: str, params: dict[str, Any]) -> Lease | None:
        async with self._session(what) as db:
            rows = list(await db.execute_fetchall(query, params))
        return _lease(rows[0]) if rows else None

    async def acquire_lease(self, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease if free or expired (a new epoch)."""
        now = self._clock.now()
        params = {"holder": holder, "now": now, "until": now + ttl_s}
        return await self._lease_query("acquire_lease", sql.ACQUIRE_LEASE, params)

    async def renew_lease(self, holder: str, epoch: int, ttl_s: float) -> Lease | None:
        """Extend our live lease; None when it expired or was taken."""
        now = self._clock.now()
        params = {"holder": holder, "epoch": epoch, "now": now, "until": now + ttl_s}
        return await self._lease_query("renew_lease", sql.RENEW_LEASE, params)

    async def release_lease(self, holder: str, epoch: int) -> None:
        """Free the lease at once."""
        params = {"holder": holder, "epoch": epoch, "now": self._clock.now()}
        async with self._session("release_lease") as db:
            await db.execute(sql.RELEASE_LEASE, params)

    async def get_lease(self) -> Lease | None:
        """The stored lease."""
        async with self._session("get_lease") as db:
            rows = list(await db.execute_fetchall(sql.GET_LEASE))
        return _lease(rows[0]) if rows else None

    # -- operations --------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        target: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[DeliveryRecord], str | None]:
        """Deliveries newest first; the opaque cursor names the last row of the previous page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        clauses: list[str] = []
        params: list[Any] = []
        if state is not None:
            clauses.append("d.state = ?")
            params.append(DeliveryState(state).value)
        if target is not None:
            clauses.append("d.target = ?")
            params.append(target)
        if cursor is not None:
            clauses.append("d.id < ?")
            params.append(decode_cursor(cursor))
        query = sql.list_deliveries(clauses)
        async with self._session("list_deliveries") as db:
            # One extra row tells whether another page exists, so the last page
            # says None instead of handing out a cursor to an empty page.
            rows = list(await db.execute_fetchall(query, (*params, limit + 1)))
        records = [record_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(records[-1].id) if len(rows) > limit else None
        return records, next_cursor

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Re-queue one dead delivery, due now; False unless it exists and is dead.

        Attempts restart at 0: an operator retries after fixing the receiver and
        expects the full retry schedule, not death on the first failure. The last
        status and error stay visible until the next attempt.
        """
        async with self._session("retry_delivery") as db:
            rows = list(await db.execute_fetchall(sql.RETRY_DEAD, (now, now, now, delivery_id)))
        self._wake(str(row[0]) for row in rows)
        return bool(rows)

    async def replay(self, target: str, since: float, until: float, now: float) -> int:
        """New pending deliveries to `target` for notifications created in [since, until].

        Notifications that already have an unfinished delivery to `target` are
        skipped: they will be delivered anyway, and queueing them twice only
        doubles the receiver's duplicates.
        """
        params = {"target": target, "since": since, "until": until, "now": now}
        async with self._session("replay") as db, db.execute(sql.REPLAY, params) as cur:
            count = cur.rowcount
        if count > 0:
            self._wake([target])
        return count

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        """{target: {"pending": n, "in_flight": n, "dead": n}}.

        Lists every subscribed target (its dispatcher runs, so zeros are news too)
        and every target with unfinished or dead rows. Delivered rows are never
        read: the query walks only the small partial indexes.
        """
        async with self._session("queue_counts") as db:
            rows = await db.execute_fetchall(sql.QUEUE_COUNTS)
        counts = {target: zero_counts() for target in self._subscribers}
        for target, state, n in rows:
            counts.setdefault(target, zero_counts())[state] = n
        return counts

    async def count_notifications(self, type_: str | None = None) -> int:
        """How many notifications are stored (optionally of one type)."""
        async with self._session("count_notifications") as db:
            if type_ is None:
                rows = list(await db.execute_fetchall(sql.COUNT_NOTIFICATIONS))
            else:
                rows = list(await db.execute_fetchall(sql.COUNT_NOTIFICATIONS_OF_TYPE, (type_,)))
        return int(rows[0][0])

    async def prune(self, older_than: float) -> int:
        """Delete what retention forgets; returns the number of rows deleted.

        - notifications created before the cutoff whose deliveries are all
          finished (delivered or dead), with those deliveries: pending work is
          never lost, however old;
        - seen tickets not updated since the cutoff (de-dup lasts as long as
          the notifications it protects);
        - keyed state (clip tasks, Slack thread ids) not written since the
          cutoff: it belongs to tickets and notifications of the same age.

        Notifications go in batches, each its own transaction, so dispatchers
        are never stalled behind one huge delete.
        """
        deleted = 0
        while True:
            async with self._transaction("prune") as db:
                rows = await db.execute_fetchall(
                    sql.PRUNABLE_NOTIFICATIONS, (older_than, _PRUNE_BATCH)
                )
                batch = [row[0] for row in rows]
                ids = json.dumps(batch)
                for statement in (sql.DELETE_DELIVERIES_OF, sql.DELETE_NOTIFICATIONS):
                    async with db.execute(statement, (ids,)) as cur:
                        deleted += cur.rowcount
            if len(batch) < _PRUNE_BATCH:
                break
        async with self._transaction("prune") as db:
            for statement in (sql.PRUNE_TICKETS, sql.PRUNE_KV, storm_sql.PRUNE_GROUPS_SQLITE):
                async with db.execute(statement, (older_than,)) as cur:
                    deleted += cur.rowcount
        return deleted


class _SqliteMigrations:
    """`MigrationDriver` for SQLite: each file runs in one IMMEDIATE transaction."""

    def __init__(self, db: aiosqlite.Connection, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def applied_version(self) -> int:
        await self._db.execute(sql.CREATE_SCHEMA_VERSION)
        rows = list(await self._db.execute_fetchall(sql.SCHEMA_VERSION))
        return int(rows[0][0])

    async def apply(self, migration: Migration) -> bool:
        # Not executescript(): it commits first and would split the migration
        # from its version row. Statements run one by one inside our transaction.
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            rows = list(await self._db.execute_fetchall(sql.SCHEMA_VERSION))
            if int(rows[0][0]) >= migration.version:
                await _rollback(self._db)  # another process got here first
                return False
            for statement in split_statements(migration.sql):
                await self._db.execute(statement)
            await self._db.execute(
                sql.RECORD_VERSION, (migration.version, migration.name, self._clock.now())
            )
            await self._db.commit()
        except BaseException:
            await _rollback(self._db)
            raise
        return True


def split_statements(script: str) -> list[str]:
    """Split an SQL script into statements (sqlite3 knows where each one ends)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise ValueError(f"unterminated SQL statement: {buffer.strip()[:80]!r}")
    return statements


async def _configure(db: aiosqlite.Connection, busy_timeout_ms: int) -> None:
    # busy_timeout first, so even switching to WAL waits for another process.
    await db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms:d}")
    await _switch_to_wal(db, busy_timeout_ms / 1000)
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a committed
    # transaction survives a crash of this process (what at-least-once needs and
    # what we test); only an OS crash or power cut may lose the last commits,
    # never corrupt the file.
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA foreign_keys = ON")
    # 16 MiB of page cache keeps the queue indexes of a large backlog in memory.
    await db.execute("PRAGMA cache_size = -16384")
    # Checkpoint every 16 MiB of WAL instead of 4: a page rewritten by many small
    # ingest commits is copied into the database once per checkpoint, which made
    # ingest ~15% faster in our benchmark. The WAL file is reused, not grown.
    await db.execute("PRAGMA wal_autocheckpoint = 4096")


async def _switch_to_wal(db: aiosqlite.Connection, timeout_s: float) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the lock.

    SQLite may answer "database is locked" at once here, without its busy handler,
    when two processes open a new file together (seen under load in
    test_two_processes_opening_at_once_migrate_once): retry until the busy timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.01)


def _probe(path: Path) -> None:
    sqlite3.connect(path).close()


async def _close_quietly(db: aiosqlite.Connection) -> None:
    """Close after a failed open; the error that made us close is the one to report."""
    try:
        await db.close()
    except sqlite3.Error:
        log.warning("closing SQLite database failed", exc_info=True)


async def _rollback(db: aiosqlite.Connection) -> None:
    """Roll back if a transaction is open; the original error is the one to report."""
    try:
        await db.rollback()
    except sqlite3.Error:
        # After an I/O error SQLite may already have rolled back by itself.
        log.warning("rollback failed", exc_info=True)


def _outcome_row(outcome: Outcome, now: float) -> dict[str, Any]:
    state, next_attempt_at, error = outcome_values(outcome, now)
    return {
        "state": state,
        "attempts": outcome.attempts,
        "status": outcome.status,
        "error": error,
        "next": next_attempt_at,
        "now": now,
        "id": outcome.delivery_id,
        "claim": outcome.claim,
    }


def _lease(row: Any) -> Lease:
    return Lease(holder=row[0], epoch=int(row[1]), expires_at=float(row[2]))


def _lock_file(path: Path) -> int:
    """Hold an exclusive lock on `<db>.lock` for the life of the process."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(
            f"another fleet-bridge is already running on the SQLite database {path}"
        ) from None
    return fd


async def _target_state(db: aiosqlite.Connection, target: str) -> TargetState:
    rows = list(await db.execute_fetchall(sql.GET_TARGET_STATE, (target,)))
    if not rows:
        return TargetState()
    paused, reason, hold_until, failures, probe_at = rows[0]
    return TargetState(
        paused=bool(paused),
        paused_reason=reason,
        hold_until=hold_until,
        failures=int(failures),
        probe_at=probe_at,
    )
