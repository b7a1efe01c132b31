"""The SQLite ingest transaction: what `SqliteStore.ingest` hands to its callback.

It runs on the store's connection inside an open `BEGIN IMMEDIATE` transaction
that the store commits or rolls back; it never commits itself. Batches go in with
`executemany`, so an ingest of 100 notifications costs a handful of round trips
to the connection's thread rather than hundreds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiosqlite

from bridge.clock import Clock, parse_rfc3339
from bridge.notifications import Notification, dumps
from bridge.store import sqlite_sql as sql
from bridge.store.base import NewNotification, SeenTicket


class SqliteIngestTx:
    """`IngestTx` bound to one open transaction; unusable once it ends."""

    def __init__(self, db: aiosqlite.Connection, clock: Clock) -> None:
        self._db: aiosqlite.Connection | None = db
        self._clock = clock
        self.targets: set[str] = set()  # targets that got deliveries: woken after commit

    def close(self) -> None:
        """Detach from the connection (the transaction is over)."""
        self._db = None

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the ingest transaction is over; use the store")
        return self._db

    async def seen_tickets(self, tickets: Sequence[str]) -> dict[str, SeenTicket]:
        """The stored state of these tickets (missing ones are absent)."""
        if not tickets:
            return {}
        # One JSON array parameter instead of N placeholders: one statement for
        # any batch size, far below SQLite's variable limit.
        rows = await self._conn().execute_fetchall(sql.SEEN_TICKETS, (json.dumps(list(tickets)),))
        return {
            row[0]: SeenTicket(
                ticket=row[0],
                revision=row[1],
                fingerprint=json.loads(row[2]),
                first_seen_at=row[3],
                updated_at=row[4],
            )
            for row in rows
        }

    async def put_tickets(self, rows: Sequence[SeenTicket]) -> None:
        """Insert or update ticket states (the first sighting time is kept)."""
        if not rows:
            return
        params = [
            (t.ticket, t.revision, dumps(t.fingerprint), t.first_seen_at, t.updated_at)
            for t in rows
        ]
        await self._conn().executemany(sql.PUT_TICKET, params)

    async def add_notifications(self, items: Sequence[NewNotification]) -> None:
        """Store notifications and one pending delivery per distinct routed target."""
        if not items:
            return
        db = self._conn()
        now = self._clock.now()
        notifications = [_notification_row(item.notification) for item in items]
        # Rows are inserted in item order, so delivery ids follow creation order.
        # New work is due at once: the earlier of the store's clock and the
        # notification's own time, so a skew between the two never delays it.
        deliveries = [
            (item.notification.id, target, min(now, item.notification.created_at), now, now)
            for item in items
            for target in dict.fromkeys(item.targets)
        ]
        await db.executemany(sql.INSERT_NOTIFICATION, notifications)
        if deliveries:
            await db.executemany(sql.INSERT_DELIVERY, deliveries)
            self.targets.update(row[1] for row in deliveries)

    async def set_cursor(self, job: str, value: float) -> None:
        """Move a poller's cursor, committed with everything else."""
        await self._conn().execute(sql.SET_CURSOR, (job, value, self._clock.now()))

    async def put_json(self, kind: str, key: str, value: dict[str, Any]) -> None:
        """Keep small keyed state in the same transaction."""
        await self._conn().execute(sql.PUT_JSON, (kind, key, dumps(value), self._clock.now()))

    async def get_json(self, kind: str, key: str) -> dict[str, Any] | None:
        """Read keyed state inside the transaction (sees its own writes)."""
        return await get_json(self._conn(), kind, key)


async def get_json(db: aiosqlite.Connection, kind: str, key: str) -> dict[str, Any] | None:
    """One keyed JSON value, or None."""
    rows = list(await db.execute_fetchall(sql.GET_JSON, (kind, key)))
    if not rows:
        return None
    value: dict[str, Any] = json.loads(rows[0][0])
    return value


def _notification_row(n: Notification) -> tuple[Any, ...]:
    return (n.id, n.type, n.created_at, _event_at(n), n.body)


def _event_at(n: Notification) -> float | None:
    """When the source item happened (`data.occurred_at`), for event-to-delivery latency."""
    occurred = n.data.get("occurred_at")
    if not isinstance(occurred, str):
        return None
    try:
        return parse_rfc3339(occurred).timestamp()
    except ValueError:
        return None
