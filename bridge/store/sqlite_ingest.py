"""The SQLite ingest transaction: what `SqliteStore.ingest` hands to its callback.

It runs on the store's connection inside an open `BEGIN IMMEDIATE` transaction
that the store commits or rolls back; it never commits itself. Batches go in with
`executemany`, so an ingest of 100 notifications costs a handful of round trips
to the connection's thread rather than hundreds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import aiosqlite

from bridge.clock import Clock
from bridge.notifications import dumps
from bridge.store import sqlite_sql as sql
from bridge.store.base import (
    Delivery,
    FencedOut,
    HandOff,
    NewNotification,
    SeenTicket,
    TicketConflict,
    TicketWrite,
)
from bridge.store.rows import notification_row, ticket_row, tickets_by_name


class SqliteIngestTx:
    """`IngestTx` bound to one open transaction; unusable once it ends."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        clock: Clock,
        fence: tuple[str, int] | None = None,
        *,
        lease_s: float = 30.0,
    ) -> None:
        self._db: aiosqlite.Connection | None = db
        self._clock = clock
        self._fence = fence
        self._lease_s = lease_s  # the store's claim lease, for rows inserted claimed
        # Targets that got pending deliveries: woken after commit. (Rows handed off
        # already claimed need no wake-up: their dispatcher gets them from the caller.)
        self.targets: set[str] = set()

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
        rows = await self._conn().execute_fetchall(sql.SEEN_TICKETS, (dumps(list(tickets)),))
        return tickets_by_name(rows)

    async def put_tickets(self, rows: Sequence[SeenTicket | TicketWrite]) -> None:
        """Write ticket states; a `TicketWrite` only if the stored ticket is still its `prev`.

        One process owns a SQLite file, so a conflict here means a caller read state
        outside this transaction; the checks are the same as PostgreSQL's all the same.
        Set-based like PostgreSQL's: one `executemany` per kind of write, its summed
        row count checked (it was one statement, one thread hop, per ticket).
        """
        if not rows:
            return
        db = self._conn()
        plain: list[tuple[Any, ...]] = []
        fresh: list[tuple[Any, ...]] = []
        moved: list[tuple[Any, ...]] = []
        for w in rows:
            if isinstance(w, SeenTicket):
                plain.append(ticket_row(w))
            elif w.prev is None:
                fresh.append(ticket_row(w.new))
            else:
                t = w.new
                moved.append(
                    (t.revision, dumps(t.fingerprint), t.updated_at, t.ticket, w.prev.revision)
                )
        if plain:
            await db.executemany(sql.PUT_TICKET, plain)
        # executemany sums the rows each run of the statement changed: a ticket
        # inserted meanwhile (DO NOTHING) or moved past its revision counts 0.
        if fresh:
            cur = await db.executemany(sql.INSERT_TICKET_IF_ABSENT, fresh)
            if cur.rowcount != len(fresh):
                raise TicketConflict("a ticket was inserted by another writer")
        if moved:
            cur = await db.executemany(sql.UPDATE_TICKET_IF_REVISION, moved)
            if cur.rowcount != len(moved):
                raise TicketConflict("a ticket's revision was moved by another writer")

    async def add_notifications(
        self, items: Sequence[NewNotification], claims: Mapping[str, HandOff] | None = None
    ) -> list[Delivery]:
        """Store notifications and one pending delivery per distinct routed target.

        With `claims`, the first `limit` new rows of each listed target go in
        `in_flight` under its token and the store's lease, and are returned (claimed,
        body in hand) for the local dispatcher; see `IngestTx.add_notifications`.
        """
        if not items:
            return []
        db = self._conn()
        now = self._clock.now()
        notifications = [notification_row(item.notification) for item in items]
        await db.executemany(sql.INSERT_NOTIFICATION, notifications)
        if claims and any(h.limit > 0 for h in claims.values()):
            return await self._add_claimed(items, notifications, claims, now)
        # Rows are inserted in item order, so delivery ids follow creation order.
        # New work is due at once: the earlier of the store's clock and the
        # notification's own time, so a skew between the two never delays it.
        deliveries = [
            (item.notification.id, target, min(now, item.notification.created_at), now, now)
            for item in items
            for target in dict.fromkeys(item.targets)
        ]
        if deliveries:
            await db.executemany(sql.INSERT_DELIVERY, deliveries)
            self.targets.update(row[1] for row in deliveries)
        return []

    async def _add_claimed(
        self,
        items: Sequence[NewNotification],
        notifications: Sequence[tuple[Any, ...]],
        claims: Mapping[str, HandOff],
        now: float,
    ) -> list[Delivery]:
        """The delivery rows of `items`, the first ones of each claimed target in flight."""
        lease = now + self._lease_s
        left = {target: h.limit for target, h in claims.items()}
        rows: list[tuple[Any, ...]] = []
        claimed: dict[tuple[str, str], tuple[Any, ...]] = {}  # (notification, target) -> its row
        for item, row in zip(items, notifications, strict=True):
            n = item.notification
            due = min(now, n.created_at)
            for target in dict.fromkeys(item.targets):
                if left.get(target, 0) > 0:
                    left[target] -= 1
                    rows.append((n.id, target, "in_flight", due, lease, claims[target].token))
                    claimed[(n.id, target)] = row
                else:
                    rows.append((n.id, target, "pending", due, None, None))
                    self.targets.add(target)
        if not rows:
            return []
        inserted = await self._conn().execute_fetchall(
            sql.INSERT_DELIVERIES_CLAIMED, {"rows": dumps(rows), "now": now}
        )
        out: list[Delivery] = []
        # RETURNING yields rows in no defined order; ids follow the array's order.
        for delivery_id, notification_id, target in sorted(inserted, key=itemgetter(0)):
            source = claimed.get((notification_id, target))
            if source is None:
                continue
            # (id, type, created_at, event_at, body), as notification_row builds it
            out.append(
                Delivery(
                    id=delivery_id,
                    notification_id=notification_id,
                    type=source[1],
                    target=target,
                    body=source[4],
                    attempts=0,
                    created_at=now,
                    event_at=source[3],
                    claim=claims[target].token,
                    claim_until=lease,
                )
            )
        return out

    async def set_cursor(self, job: str, value: float) -> None:
        """Move a poller's cursor, committed with everything else (fenced by the lease)."""
        db = self._conn()
        now = self._clock.now()
        if self._fence is not None:
            rows = list(await db.execute_fetchall(sql.LEASE_LIVE, (*self._fence, now)))
            if not rows:
                raise FencedOut(f"cursor {job!r}: the poll lease {self._fence[1]} is not live")
        await db.execute(sql.SET_CURSOR, (job, value, now))

    async def delete_json(self, kind: str, key: str) -> None:
        """Forget keyed state in the same transaction."""
        await self._conn().execute(sql.DELETE_JSON, (kind, key))

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
