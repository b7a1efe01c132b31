"""The PostgreSQL ingest: what `PostgresStore.ingest` hands to its callback.

A page of events must not cost a round trip per statement: the writes of the
hot path (tickets, notifications, deliveries, the cursor) wait in a batch and go
as one `fleet_bridge_ingest` call (migration 0006) when the callback is done, which
is atomic as any single statement, and which carries the transaction's NOTIFY.
The ticket read before them needs no transaction: the ticket writes are
insert-if-absent and revision compare-and-set, so a race still ends in
`TicketConflict` and a re-run.

Anything else (keyed state, a plain ticket upsert, a ticket read after a write)
opens a real transaction first and flushes the batch into it, so an ingest still
commits or rolls back as a whole. Such a transaction always waits for the WAL flush
at commit; the single call skips it (see the migration for why that is safe).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from asyncpg.transaction import Transaction

from bridge.clock import Clock
from bridge.notifications import dumps
from bridge.store import postgres_sql as sql
from bridge.store.base import (
    Delivery,
    FencedOut,
    HandOff,
    NewNotification,
    SeenTicket,
    TicketConflict,
    TicketWrite,
)
from bridge.store.rows import columns as _columns
from bridge.store.rows import json_object as _json_object
from bridge.store.rows import notification_row, ticket_row, tickets_by_name

_TICKET_CONFLICT = "FB001"
_FENCED_OUT = "FB002"


def notify_payload(targets: Iterable[str]) -> str | None:
    """The NOTIFY payload for these targets (a JSON list of names), None for none."""
    names = sorted(set(targets))
    return json.dumps(names) if names else None


async def notify(conn: asyncpg.Connection, targets: Iterable[str]) -> None:
    """Queue one NOTIFY for the transaction (sent by PostgreSQL at commit)."""
    payload = notify_payload(targets)
    if payload is not None:
        await conn.execute(sql.NOTIFY, sql.CHANNEL, payload)


@dataclass
class _Writes:
    """Writes waiting for the one `fleet_bridge_ingest` call."""

    fresh: list[tuple[Any, ...]] = field(default_factory=list)  # insert-if-absent
    moved: list[tuple[Any, ...]] = field(default_factory=list)  # revision CAS
    notifications: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries_at: float | None = None
    cursor: tuple[str, float, float] | None = None

    def __bool__(self) -> bool:
        return bool(self.fresh or self.moved or self.notifications or self.cursor)


class PostgresIngestTx:
    """`IngestTx` on one pooled connection; unusable once the ingest ends."""

    def __init__(
        self, conn: asyncpg.Connection, clock: Clock, fence: tuple[str, int] | None
    ) -> None:
        self._db: asyncpg.Connection | None = conn
        self._clock = clock
        self._fence = fence
        self._tx: Transaction | None = None
        self._writes = _Writes()
        self.targets: set[str] = set()

    def _conn(self) -> asyncpg.Connection:
        if self._db is None:
            raise RuntimeError("the ingest transaction is over; use the store")
        return self._db

    async def _in_transaction(self) -> asyncpg.Connection:
        """Open a real transaction (once) and move the waiting writes into it."""
        db = self._conn()
        if self._tx is None:
            self._tx = db.transaction()
            await self._tx.start()
        if self._writes:
            await self._flush(db, notify=None, durable=True)
        return db

    async def commit(self) -> None:
        """Write what waits and commit: one round trip when no transaction was opened."""
        db = self._conn()
        if self._tx is None:
            if self._writes:
                await self._flush(db, notify=notify_payload(self.targets), durable=False)
            return
        if self._writes:
            await self._flush(db, notify=None, durable=True)
        await notify(db, self.targets)
        tx, self._tx = self._tx, None
        await tx.commit()

    async def close(self) -> None:
        """End the ingest; an opened transaction that was not committed rolls back."""
        tx, self._tx, self._db = self._tx, None, None
        if tx is not None:
            # The connection is broken or closing if this fails: the pool discards it.
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await tx.rollback()

    async def _flush(self, db: asyncpg.Connection, *, notify: str | None, durable: bool) -> None:
        w, self._writes = self._writes, _Writes()
        cursor = w.cursor or (None, None, None)
        fence = self._fence if w.cursor is not None and self._fence is not None else (None, None)
        try:
            await db.execute(
                sql.INGEST,
                *_columns(w.fresh, 5),
                *_columns(w.moved, 5),
                *_columns(w.notifications, 5),
                *_columns(w.deliveries, 3),
                w.deliveries_at,
                *cursor,
                *fence,
                sql.CHANNEL,
                notify,
                durable,
            )
        except asyncpg.PostgresError as err:
            code = getattr(err, "sqlstate", None)
            if code == _TICKET_CONFLICT:
                raise TicketConflict(str(err)) from None
            if code == _FENCED_OUT:
                raise FencedOut(str(err)) from None
            raise

    async def seen_tickets(self, tickets: Sequence[str]) -> dict[str, SeenTicket]:
        """The stored state of these tickets (missing ones are absent)."""
        if not tickets:
            return {}
        db = await self._in_transaction() if self._writes else self._conn()
        rows = await db.fetch(sql.SEEN_TICKETS, list(tickets))
        return tickets_by_name(rows)

    async def put_tickets(self, rows: Sequence[SeenTicket | TicketWrite]) -> None:
        """Upsert plain states; insert-if-absent / revision CAS for `TicketWrite`s.

        The conditional writes are checked when they are written (`commit`), which
        raises `TicketConflict` as before; the whole ingest is then re-run.
        """
        self._conn()
        plain = [t for t in rows if isinstance(t, SeenTicket)]
        for w in rows:
            if not isinstance(w, TicketWrite):
                continue
            if w.prev is None:
                self._writes.fresh.append(ticket_row(w.new))
            else:
                new = w.new
                self._writes.moved.append(
                    (
                        new.ticket,
                        new.revision,
                        dumps(new.fingerprint),
                        new.updated_at,
                        w.prev.revision,
                    )
                )
        if plain:
            db = await self._in_transaction()
            await db.execute(sql.PUT_TICKETS, *_columns([ticket_row(t) for t in plain], 5))

    async def add_notifications(
        self, items: Sequence[NewNotification], claims: Mapping[str, HandOff] | None = None
    ) -> list[Delivery]:
        """Store notifications and one pending delivery per distinct routed target.

        `claims` is ignored: on a shared store fresh rows stay pending, claimable by
        every replica (so the in-flight cap and storm control see them claimed).
        """
        if not items:
            return []
        if self._writes.deliveries_at is not None:
            await self._in_transaction()  # one creation time per call: write the first
        now = self._clock.now()
        w = self._writes
        for item in items:
            n = item.notification
            w.notifications.append(notification_row(n))
            due = min(now, n.created_at)
            for target in dict.fromkeys(item.targets):
                w.deliveries.append((n.id, target, due))
                self.targets.add(target)
        w.deliveries_at = now
        return []

    async def add_notifications_now(self, items: Sequence[NewNotification]) -> list[Delivery]:
        """`add_notifications`, written at once, in a transaction the caller holds."""
        added = await self.add_notifications(items)
        if self._writes:
            await self._flush(self._conn(), notify=None, durable=True)
        return added

    async def set_cursor(self, job: str, value: float) -> None:
        """Move a poller's cursor; with a fence, only while that lease is live.

        The check runs with the writes (`commit`): a stale leader's whole ingest is
        refused with `FencedOut`, and `FOR SHARE` on the lease row makes a takeover
        wait for it, so the cursor never moves after another replica became leader.
        """
        if self._writes.cursor is not None:
            await self._in_transaction()
        self._conn()
        self._writes.cursor = (job, value, self._clock.now())

    async def put_json(self, kind: str, key: str, value: dict[str, Any]) -> None:
        db = await self._in_transaction()
        await db.execute(sql.PUT_JSON, kind, key, dumps(value), self._clock.now())

    async def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        value = await self._conn().fetchval(sql.GET_JSON, kind, key)
        return None if value is None else _json_object(value)

    async def delete_json(self, kind: str, key: str) -> None:
        db = await self._in_transaction()
        await db.execute(sql.DELETE_JSON, kind, key)
