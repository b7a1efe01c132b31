"""From vendor event items to stored notifications: normalize → de-dup → route → store.

Both ingest paths (the events poller and the vendor push endpoint) go through
`EventIngestor.ingest`, so an event seen by both is notified once. The ticket's
"seen" state is written in the SAME transaction as its notification and the
moved cursor: marking a ticket seen anywhere else would void at-least-once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bridge.clock import Clock
from bridge.dedup import VIDEOS_DUE, decide, event_data_with_revision
from bridge.event_types import EventTypeTable
from bridge.metrics import Metrics
from bridge.normalize import MalformedItem, NormalizedEvent, normalize_event
from bridge.notifications import Notification, build_notification
from bridge.reseen import KnownPage, ReseenItems
from bridge.routing import route
from bridge.settings import Settings
from bridge.store.base import (
    Delivery,
    FencedOut,
    HandOff,
    IngestTx,
    NewNotification,
    SeenTicket,
    Store,
    TicketConflict,
    TicketWrite,
    is_outage,
)

log = structlog.get_logger(__name__)

# Items normalized or built between two turns of the event loop: one process both
# ingests and sends, and a page's CPU in one piece (~5 ms) would hold every send's
# answer waiting behind it.
YIELD_EVERY = 25
POLL_SUCCESS = "poll_success"  # kv kind: {"at": unix s} per poll job, shared by replicas

Normalizer = Callable[[Mapping[str, Any], EventTypeTable], NormalizedEvent]


@dataclass
class IngestStats:
    """Counts for one batch (and, summed, for one poll run)."""

    fetched: int = 0
    created: int = 0
    updated: int = 0
    duplicates: int = 0
    malformed: int = 0
    notifications: list[Notification] = field(default_factory=list)
    # For ReseenItems: tickets whose stored state was left as it was, and how many
    # committed transactions changed some ticket's state (each bumped its epoch).
    unchanged: list[str] = field(default_factory=list)
    state_changes: int = 0

    def add(self, other: IngestStats) -> None:
        self.fetched += other.fetched
        self.created += other.created
        self.updated += other.updated
        self.duplicates += other.duplicates
        self.malformed += other.malformed
        self.unchanged += other.unchanged
        self.state_changes += other.state_changes


class SeenOnce:
    """Remembers (a bounded number of) items already logged, so each is logged once."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, item: object) -> bool:
        try:
            raw = json.dumps(item, sort_keys=True, default=str)
        except (TypeError, ValueError):
            raw = repr(item)
        key = hashlib.sha256(raw.encode()).hexdigest()
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return True


class Reservation(Protocol):
    """Room a target's local dispatcher holds for fresh rows (`Dispatcher.reserve`)."""

    @property
    def hand_off(self) -> HandOff: ...

    def accept(self, deliveries: Sequence[Delivery]) -> None: ...

    def cancel(self) -> None: ...


# (target, new rows) -> room in that target's local dispatcher for rows handed over
# claimed, or None (bridge.dispatch.Dispatcher.reserve).
Reserve = Callable[[str, int], Reservation | None]


class EventIngestor:
    """Stores notifications for a batch of vendor event items, atomically."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        on_stored: Callable[[list[Notification]], None] | None = None,
        in_tx: Callable[[IngestTx, list[Notification]], Awaitable[None]] | None = None,
        enrich: Callable[[list[NormalizedEvent]], Awaitable[list[NormalizedEvent]]] | None = None,
        reserve: Reserve | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._table = EventTypeTable(
            settings.upstream.event_types, settings.upstream.severity_levels
        )
        self._base_url = settings.upstream.base
        self._notify_updates = settings.poll.events.notify_updates
        self._malformed = SeenOnce()
        self._reseen = ReseenItems()
        self._on_stored = on_stored
        # Runs inside the ingest transaction: for state that must commit (or not) with
        # the notifications, e.g. auto-request clip candidates.
        self._in_tx = in_tx
        # Network fetches (video links, detail) that must land in the notifications
        # themselves: done before the transaction, never inside it (bridge.enrich).
        self._enrich = enrich
        # One process on the store (SQLite): fresh rows go in already claimed for the
        # local dispatchers that have room, and are handed to them after commit, so
        # they are not read back by a claim (the rows stay the durable record).
        self._reserve = reserve

    @property
    def reseen(self) -> ReseenItems:
        """Poll items known unchanged (what the steady state skips)."""
        return self._reseen

    @property
    def table(self) -> EventTypeTable:
        return self._table

    def normalize(
        self, items: Sequence[Any], *, job: str, normalizer: Normalizer = normalize_event
    ) -> tuple[list[NormalizedEvent], int]:
        """Normalize items; malformed ones are logged once, counted and skipped."""
        out: list[NormalizedEvent] = []
        malformed = 0
        for item in items:
            try:
                out.append(normalizer(item, self._table))
            except MalformedItem as err:
                malformed += 1
                self._skipped(job, item, err.reason)
            except Exception as err:  # a reader's blind spot costs one item, not the page
                malformed += 1
                self._skipped(job, item, f"unreadable ({type(err).__name__})")
        return out, malformed

    def _skipped(self, job: str, item: object, reason: str) -> None:
        self._metrics.items_malformed.labels(job=job).inc()
        if self._malformed.first_time(item):
            ticket = item.get("ticket") if isinstance(item, Mapping) else None
            log.warning(
                "skipped malformed upstream item",
                job=job,
                reason=reason,
                ticket=ticket if isinstance(ticket, str) else None,
            )

    async def ingest(
        self,
        items: Sequence[Any],
        *,
        job: str,
        cursor: float | None = None,
        normalizer: Normalizer = normalize_event,
        also: Callable[[IngestTx], Awaitable[None]] | None = None,
        page: tuple[int, KnownPage] | None = None,
    ) -> IngestStats:
        """Normalize, de-dup and store `items`; move `job`'s cursor in the same transaction.

        One transaction for the batch; if the store rejects it (or building it fails)
        for anything but being unavailable, the items go in one by one so only the
        culprit is skipped (logged once, counted as malformed) and the rest is stored.
        `also` runs in the (last) transaction too, e.g. forgetting the ingested pushes.
        `page`: the digest and paging facts of the list page that `items` are, to be
        remembered (`ReseenItems.known_page`) once all of them are known unchanged.
        """
        fetched, skipped = len(items), 0
        fingerprints: dict[str, int] = {}
        keys: list[tuple[str, int]] | None = None
        epoch = self._reseen.epoch  # before any read of ticket state (enrich reads it too)
        # Only poll items are fingerprinted: the same shape every time, re-seen often.
        reseen = self._reseen if normalizer is normalize_event else None
        if reseen is not None:
            items, fingerprints, skipped, keys = reseen.split_page(items)
            if not items and cursor is None:
                if page is not None and keys is not None:
                    reseen.remember_page(*page, keys)
                return IngestStats(fetched=fetched, duplicates=skipped)
        events, malformed = [], 0
        for start in range(0, len(items), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)  # let sends under way be answered meanwhile
            chunk, bad = self.normalize(
                items[start : start + YIELD_EVERY], job=job, normalizer=normalizer
            )
            events += chunk
            malformed += bad
        if self._enrich is not None and events:
            events = await self._enrich(events)
        stats = IngestStats(fetched=fetched, duplicates=skipped, malformed=malformed)
        try:
            stored = await self._store_events(events, job=job, cursor=cursor, also=also)
        except Exception as err:
            if _not_the_items(err):
                raise
            stored = await self._store_each(events, job=job, cursor=cursor, also=also)
        stats.add(stored)
        stats.notifications = stored.notifications
        # Remember only if no ingest changed a ticket since this one began (its own
        # changes, if any, bumped the epoch once per stored batch and dropped theirs).
        if reseen is not None and reseen.epoch == epoch + stored.state_changes:
            reseen.remember(fingerprints, stored.unchanged)
            if page is not None and keys is not None:
                reseen.remember_page(*page, keys)  # only if all its items are now known
        return stats

    async def _store_each(
        self,
        events: Sequence[NormalizedEvent],
        *,
        job: str,
        cursor: float | None,
        also: Callable[[IngestTx], Awaitable[None]] | None,
    ) -> IngestStats:
        total = IngestStats()
        for ev in events:
            try:
                one = await self._store_events([ev], job=job, cursor=None, also=None)
            except Exception as err:
                if _not_the_items(err):
                    raise
                total.malformed += 1
                self._skipped(job, ev.data, f"not storable ({type(err).__name__})")
                continue
            total.add(one)
            total.notifications += one.notifications
        if cursor is not None or also is not None:
            await self._store_events([], job=job, cursor=cursor, also=also)
        return total

    async def _store_events(
        self,
        events: Sequence[NormalizedEvent],
        *,
        job: str,
        cursor: float | None,
        also: Callable[[IngestTx], Awaitable[None]] | None,
    ) -> IngestStats:
        stats = IngestStats()
        now = self._clock.now()
        changed_tickets: dict[str, SeenTicket] = {}
        reserved: dict[str, Reservation] = {}
        handed: list[Delivery] = []

        async def work(tx: IngestTx) -> None:
            _cancel(reserved)  # a re-run (ticket conflict) starts over
            handed.clear()
            stats.created = stats.updated = stats.duplicates = 0
            stats.notifications, stats.unchanged = [], []
            changed_tickets.clear()
            known = await tx.seen_tickets(list({e.ticket for e in events}))
            # What the decisions are based on: the store writes a ticket only if it
            # still holds this (insert-if-absent / revision compare-and-set), else the
            # store re-runs `work` with fresh state. So another replica (or the push
            # path) racing on a ticket never causes a second created/updated.
            read = dict(known)
            new: list[NewNotification] = []
            for i, ev in enumerate(events):
                if i and not i % YIELD_EVERY:
                    await asyncio.sleep(0)
                decision = decide(known.get(ev.ticket), ev.ticket, ev.fingerprint, now)
                if decision.kind == "duplicate":
                    stats.duplicates += 1
                    if decision.ticket_state != known.get(ev.ticket):
                        changed_tickets[ev.ticket] = decision.ticket_state
                    elif not decision.ticket_state.fingerprint.get(VIDEOS_DUE):
                        # A ticket whose video links are owed must be seen again: the
                        # next sighting retries the fetch (bridge.video_links).
                        stats.unchanged.append(ev.ticket)
                    known[ev.ticket] = decision.ticket_state
                    continue
                known[ev.ticket] = decision.ticket_state
                changed_tickets[ev.ticket] = decision.ticket_state
                if decision.kind == "created":
                    stats.created += 1
                    type_ = "event.created"
                else:
                    stats.updated += 1
                    if not self._notify_updates:
                        continue
                    type_ = "event.updated"
                data = event_data_with_revision(ev.data, decision.revision, decision.changed)
                n = build_notification(
                    type_, data, base_url=self._base_url, now=now, event_at=ev.occurred_at
                )
                stats.notifications.append(n)
                new.append(NewNotification(n, route(self._settings.targets, n)))
            if changed_tickets:
                await tx.put_tickets(
                    [TicketWrite(t, read.get(ticket)) for ticket, t in changed_tickets.items()]
                )
                # A ticket changed later in the batch is not unchanged after all.
                stats.unchanged = [t for t in stats.unchanged if t not in changed_tickets]
            if new:
                claims = self._reserve_room(new, reserved)
                handed[:] = await tx.add_notifications(new, claims=claims)
                if self._in_tx is not None:
                    await self._in_tx(tx, stats.notifications)
            if cursor is not None:
                await tx.set_cursor(job, cursor)
            if also is not None:
                await also(tx)

        try:
            await self._store.ingest(work)
        except BaseException:
            _cancel(reserved)
            raise
        if reserved:
            _hand_over(reserved, handed)
        if changed_tickets:
            self._reseen.forget(changed_tickets)
            stats.state_changes = 1
        # One labels() lookup per type, not per notification (measured: ~1.5 µs each).
        for type_, count in Counter(n.type for n in stats.notifications).items():
            self._metrics.notifications.labels(type=type_).inc(count)
        if self._on_stored is not None and stats.notifications:
            self._on_stored(stats.notifications)
        return stats

    def _reserve_room(
        self, new: Sequence[NewNotification], reserved: dict[str, Reservation]
    ) -> dict[str, HandOff] | None:
        """Reserve room for the new rows in the targets' local dispatchers."""
        if self._reserve is None:
            return None
        rows = Counter(t for item in new for t in dict.fromkeys(item.targets))
        for target, n in rows.items():
            reservation = self._reserve(target, n)
            if reservation is not None:
                reserved[target] = reservation
        return {t: r.hand_off for t, r in reserved.items()} or None

    async def get_cursor(self, job: str) -> float | None:
        """A poller's persisted cursor."""
        return await self._store.get_cursor(job)

    async def last_success(self, job: str) -> float | None:
        """When a poll `job` last succeeded on any replica."""
        value = await self._store.get_json(POLL_SUCCESS, job)
        at = None if value is None else value.get("at")
        return float(at) if isinstance(at, int | float) else None

    async def note_success(self, job: str, at: float) -> None:
        """Record a successful poll run for every replica's status API."""

        async def work(tx: IngestTx) -> None:
            await tx.put_json(POLL_SUCCESS, job, {"at": at})

        await self._store.ingest(work)

    async def move_cursor(self, job: str, value: float) -> None:
        """Persist a cursor on its own (after a window with no items)."""

        async def work(tx: IngestTx) -> None:
            await tx.set_cursor(job, value)

        await self._store.ingest(work)


def _cancel(reserved: dict[str, Reservation]) -> None:
    for reservation in reserved.values():
        reservation.cancel()
    reserved.clear()


def _hand_over(reserved: dict[str, Reservation], handed: Sequence[Delivery]) -> None:
    """After commit: each dispatcher gets the rows stored claimed under its reservation."""
    by_target: dict[str, list[Delivery]] = {t: [] for t in reserved}
    for delivery in handed:
        by_target[delivery.target].append(delivery)
    for target, reservation in reserved.items():
        reservation.accept(by_target[target])
    reserved.clear()


def _not_the_items(err: BaseException) -> bool:
    """Errors that say nothing about the items: retrying them one by one is pointless."""
    # A fenced cursor (we lost the poll lease) or a ticket race lost five times over
    # is about this replica's timing, not about the data.
    return is_outage(err) or isinstance(err, FencedOut | TicketConflict)
