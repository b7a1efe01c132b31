"""Re-seen, unchanged vendor items recognized before they are normalized.

The events poller re-scans its lookback window on every run: with `lookback_s: 900`
and `interval_s: 30` an event comes back about 30 times, and each time it was
normalized, looked up in the store and found unchanged. `ReseenItems` remembers,
per ticket, a fingerprint of the raw item the store last found unchanged; an
identical item is then skipped before anything else (~2 µs instead of ~40 µs).

At-least-once is untouched. An entry is written only after a commit that left the
ticket's stored state as it was, and only if no ingest of this process changed any
ticket's state meanwhile (the `epoch`); every change of a ticket's state drops its
entry. An item that differs in any byte misses and takes the full path. Another
replica changing a ticket is not seen here; the poll item would have to be
byte-identical to the last one this process checked, i.e. the vendor's list still
showing what the store had before, for the skip to matter.

Whole pages too: a page whose bytes (apart from the envelope's per-response `uq`:
`bridge.upstream.envelope.page_digest`) are those of a page whose every item was
remembered here is not even parsed (`known_page`), as long as each of its items is
still remembered with the same fingerprint. Identical bytes parse to identical
items, so this skips exactly what the per-item check would; it saves the JSON
parse, the vendor-text bounds and the per-item fingerprints, the larger part of a
re-seen item's cost. That "still remembered" is itself O(1) while no remembered
fingerprint was dropped or replaced since the page was last checked (`_changes`), as
in a steady state; after such a change the page's items are checked one by one again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

CAPACITY = 100_000
"""Tickets remembered (~150 bytes each); beyond it the oldest entries go first.

A window holding more events than this still works, only without the shortcut."""

PAGE_CAPACITY = CAPACITY
"""Items of remembered pages, all pages together (~100 bytes each: the ticket strings
are those the per-ticket memory holds); beyond it the oldest pages go first."""


class KnownPage(NamedTuple):
    """What paging needs of a page skipped unparsed: entries sent and the vendor total."""

    received: int
    total: int | None


class _Page:
    """A remembered page: its paging facts, its items, when they were last all held."""

    __slots__ = ("checked_at", "fingerprints", "received", "tickets", "total")

    def __init__(self, page: KnownPage, keys: Sequence[tuple[str, int]], checked_at: int) -> None:
        self.received, self.total = page.received, page.total
        self.tickets = [ticket for ticket, _ in keys]
        self.fingerprints = [fingerprint for _, fingerprint in keys]
        self.checked_at = checked_at


class ReseenItems:
    """Raw-item fingerprints of tickets the store last found unchanged."""

    def __init__(self, capacity: int = CAPACITY, page_capacity: int = PAGE_CAPACITY) -> None:
        self._fingerprints: dict[str, int] = {}
        self._capacity = capacity
        self._pages: dict[int, _Page] = {}  # by page digest
        self._page_capacity = page_capacity
        self._page_items = 0  # items of all remembered pages
        self.pages_known = 0  # pages skipped unparsed so far
        self.epoch = 0  # bumped whenever a ticket's stored state changes
        # Bumped whenever a remembered fingerprint is dropped or replaced: a page checked
        # at the current value still holds (adding a ticket cannot unmake a page).
        self._changes = 0

    def __len__(self) -> int:
        return len(self._fingerprints)

    def split(self, items: Sequence[Any]) -> tuple[list[Any], dict[str, int], int]:
        """The items still to ingest, their fingerprints by ticket, and how many were skipped."""
        fresh, fingerprints, skipped, _ = self.split_page(items)
        return fresh, fingerprints, skipped

    def split_page(
        self, items: Sequence[Any]
    ) -> tuple[list[Any], dict[str, int], int, list[tuple[str, int]] | None]:
        """`split`, and every item's (ticket, fingerprint): None if one has none."""
        known = self._fingerprints
        fresh: list[Any] = []
        fingerprints: dict[str, int] = {}
        keys: list[tuple[str, int]] | None = []
        for item in items:
            key = _fingerprint(item)
            if key is None:
                fresh.append(item)
                keys = None
                continue
            if keys is not None:
                keys.append(key)
            ticket, fingerprint = key
            if known.get(ticket) != fingerprint:
                fresh.append(item)
                fingerprints[ticket] = fingerprint
        return fresh, fingerprints, len(items) - len(fresh), keys

    def known_page(self, digest: int) -> KnownPage | None:
        """Paging facts of a page that need not be parsed: every item it holds is still
        remembered unchanged with the fingerprint it had; else None."""
        entry = self._pages.get(digest)
        if entry is None:
            return None
        if not self.holds_page(digest):
            self._drop_page(digest)  # re-learned once the full path finds it unchanged
            return None
        self.pages_known += 1
        return KnownPage(entry.received, entry.total)

    def holds_page(self, digest: int) -> bool:
        """Whether a page is (still) known: for a page checked ahead of its use (a
        prefetched page), checked again when it is used."""
        entry = self._pages.get(digest)
        if entry is None:
            return False
        if entry.checked_at == self._changes:
            return True
        if list(map(self._fingerprints.get, entry.tickets)) != entry.fingerprints:
            return False
        entry.checked_at = self._changes
        return True

    def remember_page(self, digest: int, page: KnownPage, keys: Sequence[tuple[str, int]]) -> None:
        """Record a page whose items (`keys`) are all remembered unchanged right now."""
        known = self._fingerprints
        if any(known.get(ticket) != fingerprint for ticket, fingerprint in keys):
            return
        if len(keys) > self._page_capacity:
            return
        pages = self._pages
        self._drop_page(digest)
        while self._page_items + len(keys) > self._page_capacity:
            self._drop_page(next(iter(pages)))  # the oldest entry
        pages[digest] = _Page(page, keys, self._changes)
        self._page_items += len(keys)

    def _drop_page(self, digest: int) -> None:
        entry = self._pages.pop(digest, None)
        if entry is not None:
            self._page_items -= len(entry.tickets)

    def remember(self, fingerprints: dict[str, int], tickets: Iterable[str]) -> None:
        """Record `tickets` (found unchanged by a committed ingest) with their fingerprints."""
        known = self._fingerprints
        for ticket in tickets:
            fingerprint = fingerprints.get(ticket)
            if fingerprint is None:
                continue
            held = known.get(ticket)
            if held is None and len(known) >= self._capacity:
                del known[next(iter(known))]  # the oldest entry
                self._changes += 1
            elif held is not None and held != fingerprint:
                self._changes += 1
            known[ticket] = fingerprint

    def forget(self, tickets: Iterable[str]) -> None:
        """These tickets' stored state changed: their items must be checked again."""
        self.epoch += 1
        known = self._fingerprints
        for ticket in tickets:
            if known.pop(ticket, None) is not None:
                self._changes += 1


def _fingerprint(item: Any) -> tuple[str, int] | None:
    """(ticket, hash of the item's JSON), or None for what the full path must judge."""
    if type(item) is not dict:
        return None
    ticket = item.get("ticket")
    if type(ticket) is not str:
        return None
    try:
        # orjson keeps key order, so the same vendor item gives the same bytes; a
        # reordered one only misses. 64-bit SipHash: a collision is a 2^-64 event.
        return ticket.strip(), hash(orjson.dumps(item))
    except TypeError:  # e.g. an integer beyond 64 bits: leave it to the full path
        return None
