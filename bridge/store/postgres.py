"""The PostgreSQL store: any number of replicas on one database (SPEC §9).

- One asyncpg pool of `store.pool_size` connections per replica for the work.
- A dedicated connection for LISTEN (new-work wake-ups from other replicas) and
  one for the poll lease: the pool resets session state (LISTEN, advisory locks)
  when a connection goes back, and renewal must never queue behind a busy pool.
- Migrations run once, under an advisory lock, by whichever replica starts first.
- Every write that several replicas may race on is decided by the database:
  tickets insert-if-absent / revision compare-and-set, claims `FOR UPDATE SKIP
  LOCKED` with a token and an expiry, cursor writes fenced by the lease epoch.

Connection-level failures leave as `StoreUnavailable` and are logged once per
state change ("store unavailable" … "store available again"), not per retry. Only an
operation begun after the last failure counts as the store being back: one already
under way on a connection that outlived the outage proves nothing about new ones,
and logging it would make one outage read as two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import structlog

from bridge.clock import Clock
from bridge.store import postgres_sql as sql
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
from bridge.store.postgres_ingest import PostgresIngestTx, notify
from bridge.store.rows import (
    columns,
    delivery_from_row,
    json_object,
    outcome_values,
    record_from_row,
    zero_counts,
)
from bridge.store.storm_tx import StormTx

log = structlog.get_logger(__name__)
T = TypeVar("T")

CLAIM_S = 30.0  # SPEC §9: a dead replica's deliveries are taken over within 60 s
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0
LISTEN_CHECK_S = 2.0  # the LISTEN connection is probed this often (and re-listened)
INGEST_ATTEMPTS = 5
_PRUNE_BATCH = 2000
# What "the database is gone" looks like from asyncpg; other errors are bugs or data.
_CONNECTION_ERRORS = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)


def describe_url(url: str) -> str:
    """`host:port/db` of a PostgreSQL URL, never its password (for messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


class PostgresStore:
    """`Store` on a PostgreSQL database shared by every replica."""

    shared = True

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        pool_size: int = 8,
        claim_s: float = CLAIM_S,
        lease_s: float = 15.0,
    ) -> None:
        self._url = url
        self._where = describe_url(url)
        self._clock = clock
        self._pool_size = pool_size
        self._claim_s = claim_s
        # A frozen replica (SIGSTOP, a stalled VM) must not hold row locks forever: its
        # open transaction would block the lease takeover (the fence locks the lease
        # row) and claims. The server ends a session idle inside a transaction after
        # this, rolling the frozen work back, well before the lease could pass on.
        self._idle_tx_ms = int(max(500.0, lease_s * 750))
        self._pool: asyncpg.Pool | None = None
        self._lease_conn: asyncpg.Connection | None = None
        self._lease_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._subscribers: dict[str, list[Callable[[], None]]] = {}
        self._fence: tuple[str, int] | None = None
        self._available = True
        self._failures = 0  # connection-level failures so far (see `_came_back`)

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Migrate under the advisory lock, open the pool, start listening."""
        if self._pool is not None:
            return
        migrations = await asyncio.to_thread(load_migrations, "postgresql")
        try:
            conn = await self._connect()
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as err:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self._where}: {_reason(err)}"
            ) from None
        try:
            applied = await _migrate_locked(conn, migrations, self._clock)
        except asyncpg.PostgresError as err:
            raise StoreUnavailable(f"cannot migrate PostgreSQL at {self._where}: {err}") from None
        finally:
            await _close_quietly(conn)
        if applied:
            log.info("store migrated", store=self._where, versions=applied)
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                reset=_reset_pooled,
                server_settings={
                    "idle_in_transaction_session_timeout": str(self._idle_tx_ms),
                    # Plan each statement for the table as it is now. A generic plan,
                    # cached while a table was nearly empty (a new database, before
                    # autovacuum's first ANALYZE), kept scanning whole tables as they
                    # grew: the ticket look-up of a 30k-event backlog drain cost 225
                    # µs of server CPU per event instead of under 50. Planning our
                    # small statements costs far less than one such scan.
                    "plan_cache_mode": "force_custom_plan",
                },
            )
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as err:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self._where}: {_reason(err)}"
            ) from None
        self._listener = asyncio.create_task(self._listen(), name="store:listen")

    async def close(self) -> None:
        """Stop listening, close the lease connection and the pool."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._lease_conn is not None:
            await _close_quietly(self._lease_conn)
            self._lease_conn = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    await pool.close()
            except (TimeoutError, *_CONNECTION_ERRORS, asyncpg.PostgresError):
                pool.terminate()

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers a real query."""
        async with self._conn("ping") as conn:
            await conn.fetchval("SELECT 1 FROM schema_version LIMIT 1")

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S
        )

    # -- plumbing ------------------------------------------------------------------

    def _went_down(self, what: str, err: BaseException) -> StoreUnavailable:
        self._failures += 1
        if self._available:
            self._available = False
            log.warning("store unavailable", store=self._where, during=what, error=_reason(err))
        return StoreUnavailable(f"PostgreSQL {what} failed: {_reason(err)}")

    def _came_back(self, failures_at_start: int) -> None:
        """An operation succeeded; it shows the store back only if none failed since it began."""
        if not self._available and failures_at_start == self._failures:
            self._available = True
            log.info("store available again", store=self._where)

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; driver errors become `StoreUnavailable`."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the PostgreSQL store is closed")
        failures = self._failures
        try:
            async with pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                yield conn
        except (UnicodeError, OverflowError, asyncpg.DataError) as err:
            # A value PostgreSQL cannot take (unencodable text, NUL, out of range):
            # the same data fails the same way, so callers skip it (`StoreRejected`).
            raise StoreRejected(f"PostgreSQL {what} refused a value: {_reason(err)}") from err
        except _CONNECTION_ERRORS as err:
            raise self._went_down(what, err) from err
        except asyncpg.PostgresError as err:
            raise StoreUnavailable(f"PostgreSQL {what} failed: {err}") from err
        self._came_back(failures)

    def _wake(self, targets: Iterable[str]) -> None:
        for target in targets:
            for wake in self._subscribers.get(target, ()):
                try:
                    wake()
                except Exception:  # one broken subscriber must not undo a committed write
                    log.exception("store wake callback failed", target=target)

    async def _notify(self, conn: asyncpg.Connection, targets: Iterable[str]) -> None:
        """Queue one NOTIFY for the transaction (sent by PostgreSQL at commit)."""
        await notify(conn, targets)

    async def _listen(self) -> None:
        """Keep a LISTEN connection; re-listen after it drops, and wake everyone then."""
        backoff = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                await conn.add_listener(sql.CHANNEL, self._on_notify)
                backoff = 0.5
                self._listening.set()
                # Wake-ups may have been missed while we were away: look now.
                self._wake(list(self._subscribers))
                while not conn.is_closed():
                    await asyncio.sleep(LISTEN_CHECK_S)
                    await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: S110 - the pool's users report the outage once
                pass
            finally:
                self._listening.clear()
                if conn is not None:
                    await _close_quietly(conn)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            targets = json.loads(payload)
        except ValueError:
            return
        if isinstance(targets, list):
            self._wake(str(t) for t in targets)

    # -- ingest ------------------------------------------------------------------

    async def ingest(self, fn: IngestFn) -> Any:
        """Run `fn(tx)` atomically (`PostgresIngestTx`); re-run it after a ticket conflict."""
        for attempt in range(1, INGEST_ATTEMPTS + 1):
            try:
                async with self._conn("ingest") as conn:
                    tx = PostgresIngestTx(conn, self._clock, self._fence)
                    try:
                        result = await fn(tx)
                        await tx.commit()
                    finally:
                        await tx.close()
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
        async with self._conn("get_cursor") as conn:
            value = await conn.fetchval(sql.GET_CURSOR, job)
        return None if value is None else float(value)

    async def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        """Keyed state outside a transaction."""
        async with self._conn("get_json") as conn:
            value = await conn.fetchval(sql.GET_JSON, kind, key)
        return None if value is None else json_object(value)

    async def list_json(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """All keyed state of one kind, by key."""
        async with self._conn("list_json") as conn:
            rows = await conn.fetch(sql.LIST_JSON, kind)
        return [(str(row[0]), json_object(row[1])) for row in rows]

    # -- dispatch ----------------------------------------------------------------

    def subscribe(self, target: str, wake: Callable[[], None]) -> None:
        """Call `wake()` when work for `target` is committed here or on any replica."""
        self._subscribers.setdefault(target, []).append(wake)

    async def recover(self) -> int:
        """Release expired claims (their claimers are gone); live ones are other replicas'."""
        async with self._conn("recover") as conn, conn.transaction():
            rows = await conn.fetch(sql.RECOVER_EXPIRED, self._clock.now())
            targets = {str(row[0]) for row in rows}
            await self._notify(conn, targets)
        self._wake(targets)
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
        """Claim due deliveries of `target` under a new token (see `Store.claim`)."""
        if limit < 1:
            return []
        token = uuid.uuid4().hex
        lease = now + self._claim_s
        # One statement (migration 0002): lock the target, count live claims, claim.
        async with self._conn("claim") as conn:
            rows = await conn.fetch(
                sql.CLAIM, target, now, lease, token, limit, max_in_flight, fifo
            )
        return [delivery_from_row(row, token, lease) for row in rows]

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
        """Settle, claim and ask for in-flight slots in one round trip (see `Store.claim_share`)."""
        token = uuid.uuid4().hex
        lease = now + self._claim_s
        async with self._conn("claim_share") as conn:
            rows = await conn.fetch(
                sql.CLAIM_SHARE,
                *_outcome_columns(outcomes, now),
                target,
                now,
                lease,
                token,
                max(0, limit),
                max_in_flight,
                replica,
                sending,
                queued,
            )
        # The function's last row carries the share; the others are the claimed rows.
        *claimed, last = rows
        return ShareClaim(
            [delivery_from_row(row, token, lease) for row in claimed],
            share=int(last[8]),
            until=lease,
            fair=int(last[9]),
        )

    async def next_due_at(self, target: str, *, fifo: bool) -> float | None:
        """The earliest time a claim of `target` can return something (None if nothing waits)."""
        async with self._conn("next_due_at") as conn:
            if fifo:
                row = await conn.fetchrow(sql.FIFO_HEAD, target)
                if row is None:
                    return None
                return float(row[1] if row[0] == "pending" else row[2])
            row = await conn.fetchrow(sql.NEXT_DUE, target)
        due = [float(v) for v in row if v is not None] if row is not None else []
        return min(due) if due else None

    async def record_outcomes(self, outcomes: Sequence[Outcome], now: float) -> None:
        """Record attempt results in one statement; stale or foreign claims are ignored."""
        if not outcomes:
            return
        columns = _outcome_columns(outcomes, now)
        async with self._conn("record_outcomes") as conn:
            await conn.execute(sql.RECORD_OUTCOMES, *columns, now)

    async def get_target_state(self, target: str) -> TargetState:
        """Pause / hold state of a target (defaults when never set)."""
        async with self._conn("get_target_state") as conn:
            return _target_state(await conn.fetchrow(sql.GET_TARGET_STATE, target))

    async def set_target_state(self, target: str, state: TargetState) -> None:
        """Persist pause / hold / failing state of a target."""
        args = (
            target,
            state.paused,
            state.paused_reason,
            state.hold_until,
            state.failures,
            state.probe_at,
            self._clock.now(),
        )
        async with self._conn("set_target_state") as conn:
            await conn.execute(sql.SET_TARGET_STATE, *args)

    async def target_failed(
        self,
        target: str,
        now: float,
        *,
        probe: bool,
        failing_after: int,
        probe_delay: Callable[[int], float],
    ) -> tuple[TargetState, bool]:
        """Count one transient failure for the target as a whole, under its row lock."""
        async with self._conn("target_failed") as conn, conn.transaction():
            await conn.execute(sql.ENSURE_TARGET_STATE, target, now)
            state = _target_state(await conn.fetchrow(sql.LOCK_TARGET_STATE, target))
            changed = after_failure(
                state, now, probe=probe, failing_after=failing_after, probe_delay=probe_delay
            )
            if changed is None:
                return state, False
            state, started = changed
            await conn.execute(sql.SET_FAILURES, target, state.failures, state.probe_at, now)
        return state, started

    async def claim_probe(self, target: str, now: float) -> Delivery | None:
        """Claim a failing target's probe when due; of all replicas, one wins."""
        token, lease = uuid.uuid4().hex, now + self._claim_s
        async with self._conn("claim_probe") as conn, conn.transaction():
            # The row lock serialises the replicas' attempts: the first moves probe_at
            # past `now`, and the others then find the probe not due.
            probe_at = _target_state(await conn.fetchrow(sql.LOCK_TARGET_STATE, target)).probe_at
            if probe_at is None or probe_at > now:
                return None
            row = await conn.fetchrow(sql.CLAIM_PROBE, target, now, lease, token)
            if row is None:
                return None
            # The next probe no earlier than this one's claim expiry (its outcome sets it).
            await conn.execute(sql.SET_PROBE_AT, target, lease, now)
        return delivery_from_row(row, token, lease)

    async def target_recovered(self, target: str, now: float) -> int | None:
        """End a failure streak; a failing target's waiting deliveries flow on every replica."""
        async with self._conn("target_recovered") as conn, conn.transaction():
            state = _target_state(await conn.fetchrow(sql.LOCK_TARGET_STATE, target))
            if not state.failures and not state.failing:
                return None
            await conn.execute(sql.SET_FAILURES, target, 0, None, now)
            if not state.failing:
                return None
            count = _rowcount(await conn.execute(sql.RELEASE_WAITING, target, now))
            await self._notify(conn, [target])  # the others stop waiting for a probe
        self._wake([target])
        return count

    async def expire_pending(self, target: str, created_before: float, now: float) -> int:
        """Dead-letter pending deliveries of `target` queued before `created_before`."""
        error = "expired: not delivered within retry.max_age_s"
        async with self._conn("expire_pending") as conn:
            status = await conn.execute(sql.EXPIRE_PENDING, target, created_before, now, error)
        return _rowcount(status)

    async def _target_update(self, what: str, query: str, *args: Any) -> bool:
        async with self._conn(what) as conn, conn.transaction():
            await conn.execute(sql.ENSURE_TARGET_STATE, args[0], self._clock.now())
            status = await conn.execute(query, *args)
            changed = _rowcount(status) > 0
            if changed and what == "resume_target":
                await self._notify(conn, [args[0]])
        return changed

    async def pause_target(self, target: str, reason: str) -> bool:
        """Pause a target for every replica; False if it was paused already."""
        now = self._clock.now()
        return await self._target_update("pause_target", sql.PAUSE_TARGET, target, reason, now)

    async def resume_target(self, target: str) -> bool:
        """Un-pause a target and wake its dispatchers on every replica."""
        changed = await self._target_update(
            "resume_target", sql.RESUME_TARGET, target, self._clock.now()
        )
        if changed:
            self._wake([target])
        return changed

    async def hold_target(self, target: str, until: float) -> None:
        """No sends before `until`, for every replica; never shortens a hold."""
        now = self._clock.now()
        await self._target_update("hold_target", sql.HOLD_TARGET, target, until, now)

    async def reserve_send_slot(self, target: str, now: float, interval_s: float) -> float:
        """The start of this caller's slot in the target's shared rate budget."""
        async with self._conn("reserve_send_slot") as conn, conn.transaction():
            await conn.execute(sql.ENSURE_TARGET_STATE, target, self._clock.now())
            slot = await conn.fetchval(sql.RESERVE_SLOT, target, now, interval_s)
        return float(slot)

    async def storm(self, target: str, fn: Callable[[StormTx], Awaitable[T]]) -> T:
        """Run `fn(tx)` in one transaction under the target's storm lock (all replicas)."""
        async with self._conn("storm") as conn, conn.transaction():
            await conn.execute(storm_sql.POSTGRES_LOCK, target)

            async def fetch(query: str, *args: Any) -> Sequence[Sequence[Any]]:
                return list(await conn.fetch(query, *args))

            async def execute(query: str, *args: Any) -> None:
                await conn.execute(query, *args)

            ingest_tx = PostgresIngestTx(conn, self._clock, None)
            add = ingest_tx.add_notifications_now
            tx = StormTx(target, storm_sql.POSTGRES, fetch, execute, add)
            try:
                result = await fn(tx)
            finally:
                await ingest_tx.close()
            if tx.woken:
                await self._notify(conn, [target])
        if tx.woken:
            self._wake([target])
        return result

    # -- the poll lease (its own connection, the database clock) --------------------

    async def _lease_call(self, what: str, query: str, *args: Any) -> Lease | None:
        async with self._lease_lock:
            failures = self._failures
            try:
                if self._lease_conn is None or self._lease_conn.is_closed():
                    self._lease_conn = await self._connect()
                row = await self._lease_conn.fetchrow(query, *args, timeout=CONNECT_TIMEOUT_S)
            except _CONNECTION_ERRORS as err:
                if self._lease_conn is not None:
                    await _close_quietly(self._lease_conn)
                    self._lease_conn = None
                raise self._went_down(what, err) from err
            except asyncpg.PostgresError as err:
                raise StoreUnavailable(f"PostgreSQL {what} failed: {err}") from err
        self._came_back(failures)
        return None if row is None else _lease(row)

    async def acquire_lease(self, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease if it is free or expired (a new epoch)."""
        return await self._lease_call("acquire_lease", sql.ACQUIRE_LEASE, holder, ttl_s)

    async def renew_lease(self, holder: str, epoch: int, ttl_s: float) -> Lease | None:
        """Extend our live lease by `ttl_s` from the database's now."""
        return await self._lease_call("renew_lease", sql.RENEW_LEASE, holder, epoch, ttl_s)

    async def release_lease(self, holder: str, epoch: int) -> None:
        """Free the lease at once."""
        async with self._lease_lock:
            conn = self._lease_conn
            if conn is None or conn.is_closed():
                return  # nothing to release on: it expires by itself
            try:
                await conn.execute(sql.RELEASE_LEASE, holder, epoch, timeout=CONNECT_TIMEOUT_S)
            except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as err:
                log.warning("releasing the poll lease failed; it expires", error=_reason(err))

    async def get_lease(self) -> Lease | None:
        """The stored lease."""
        async with self._conn("get_lease") as conn:
            row = await conn.fetchrow(sql.GET_LEASE)
        return None if row is None else _lease(row)

    # -- operations --------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        target: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[DeliveryRecord], str | None]:
        """Deliveries newest first, with an opaque cursor for the next page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        clauses: list[str] = []
        args: list[Any] = []
        if state is not None:
            args.append(DeliveryState(state).value)
            clauses.append(f"d.state = ${len(args)}")
        if target is not None:
            args.append(target)
            clauses.append(f"d.target = ${len(args)}")
        if cursor is not None:
            args.append(decode_cursor(cursor))
            clauses.append(f"d.id < ${len(args)}")
        args.append(limit + 1)
        query = sql.list_deliveries(clauses, len(args))
        async with self._conn("list_deliveries") as conn:
            rows = await conn.fetch(query, *args)
        records = [record_from_row(row) for row in rows[:limit]]
        next_cursor = encode_cursor(records[-1].id) if len(rows) > limit else None
        return records, next_cursor

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Re-queue one dead delivery, due now, with a fresh retry budget."""
        async with self._conn("retry_delivery") as conn, conn.transaction():
            rows = await conn.fetch(sql.RETRY_DEAD, now, delivery_id)
            await self._notify(conn, (str(row[0]) for row in rows))
        self._wake(str(row[0]) for row in rows)
        return bool(rows)

    async def replay(self, target: str, since: float, until: float, now: float) -> int:
        """New pending deliveries to `target` for notifications created in [since, until]."""
        async with self._conn("replay") as conn, conn.transaction():
            count = _rowcount(await conn.execute(sql.REPLAY, target, since, until, now))
            if count:
                await self._notify(conn, [target])
        if count:
            self._wake([target])
        return count

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        """{target: {"pending": n, "in_flight": n, "dead": n}} (all replicas' rows)."""
        async with self._conn("queue_counts") as conn:
            rows = await conn.fetch(sql.QUEUE_COUNTS)
        counts = {target: zero_counts() for target in self._subscribers}
        for target, state, n in rows:
            counts.setdefault(target, zero_counts())[state] = int(n)
        return counts

    async def count_notifications(self, type_: str | None = None) -> int:
        """How many notifications are stored (optionally of one type)."""
        async with self._conn("count_notifications") as conn:
            if type_ is None:
                return int(await conn.fetchval(sql.COUNT_NOTIFICATIONS))
            return int(await conn.fetchval(sql.COUNT_NOTIFICATIONS_OF_TYPE, type_))

    async def prune(self, older_than: float) -> int:
        """Delete what retention forgets, in batches (see `SqliteStore.prune`)."""
        deleted = 0
        while True:
            async with self._conn("prune") as conn, conn.transaction():
                ids = [
                    row[0]
                    for row in await conn.fetch(
                        sql.PRUNABLE_NOTIFICATIONS, older_than, _PRUNE_BATCH
                    )
                ]
                deleted += _rowcount(await conn.execute(sql.DELETE_DELIVERIES_OF, ids))
                deleted += _rowcount(await conn.execute(sql.DELETE_NOTIFICATIONS, ids))
            if len(ids) < _PRUNE_BATCH:
                break
        async with self._conn("prune") as conn, conn.transaction():
            for statement in (sql.PRUNE_TICKETS, sql.PRUNE_KV, storm_sql.PRUNE_GROUPS_POSTGRES):
                deleted += _rowcount(await conn.execute(statement, older_than))
        return deleted


class _PostgresMigrations:
    """`MigrationDriver` on the connection that holds the migration lock."""

    def __init__(self, conn: asyncpg.Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    async def applied_version(self) -> int:
        await self._conn.execute(sql.CREATE_SCHEMA_VERSION)
        return int(await self._conn.fetchval(sql.SCHEMA_VERSION))

    async def apply(self, migration: Migration) -> bool:
        async with self._conn.transaction():
            if int(await self._conn.fetchval(sql.SCHEMA_VERSION)) >= migration.version:
                return False
            await self._conn.execute(migration.sql)  # simple protocol: many statements
            await self._conn.execute(
                sql.RECORD_VERSION, migration.version, migration.name, self._clock.now()
            )
        return True


async def _migrate_locked(
    conn: asyncpg.Connection, migrations: Sequence[Migration], clock: Clock
) -> list[int]:
    """Migrate while holding the advisory lock: replicas starting together wait here."""
    await conn.execute("SELECT pg_advisory_lock($1)", sql.MIGRATION_LOCK_KEY)
    try:
        return await migrate(_PostgresMigrations(conn, clock), migrations)
    finally:
        with contextlib.suppress(*_CONNECTION_ERRORS, asyncpg.PostgresError):
            await conn.execute("SELECT pg_advisory_unlock($1)", sql.MIGRATION_LOCK_KEY)


def _outcome_columns(outcomes: Sequence[Outcome], now: float) -> list[list[Any]]:
    """The seven arrays the outcome UPDATE unnests (id, state, attempts, status, error,
    next attempt, claim)."""
    rows = []
    for outcome in outcomes:
        state, next_at, error = outcome_values(outcome, now)
        rows.append(
            (
                outcome.delivery_id,
                state,
                outcome.attempts,
                outcome.status,
                error,
                next_at,
                outcome.claim,
            )
        )
    return columns(rows, 7)


def _rowcount(status: str) -> int:
    """Rows affected from a command tag such as `UPDATE 3` or `INSERT 0 5`."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _target_state(row: Any) -> TargetState:
    if row is None:
        return TargetState()
    return TargetState(
        paused=bool(row[0]),
        paused_reason=row[1],
        hold_until=row[2],
        failures=int(row[3]),
        probe_at=row[4],
    )


def _lease(row: Any) -> Lease:
    return Lease(holder=row[0], epoch=int(row[1]), expires_at=float(row[2]))


def _reason(err: BaseException) -> str:
    """A short, password-free description of a driver error."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


async def _reset_pooled(conn: asyncpg.Connection) -> None:
    """Make a connection given back to the pool fit for the next call.

    asyncpg's own reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` at every release: a round trip (and server work) per store call.
    Pooled connections here keep no session state (LISTEN, the lease and the
    migration lock have connections of their own; the storm lock is transaction
    scoped), so only a transaction left open (a call cancelled inside it) needs it.
    """
    if conn.is_in_transaction():
        await conn.reset()


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await conn.close()
    except (TimeoutError, *_CONNECTION_ERRORS, asyncpg.PostgresError):
        conn.terminate()
