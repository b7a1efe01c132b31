"""The simulator's visible events, kept sorted by timestamp for cheap window queries.

Benchmarks page through tens of thousands of events 100 at a time, so a page must
cost O(log n + page), not a scan: the list is kept sorted by `(timestamp, seq)` and
windows are found with `bisect`. Filtered queries scan their window once and are
cached until the log changes, so paging a filtered window stays cheap too.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from bridge.simulator.data import Event

_sort_key = attrgetter("sort_key")


def _timestamp(event: Event) -> int:
    return event.sort_key[0]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The optional filters of `GET /V2/events`; empty means "no filter"."""

    types: frozenset[int] = frozenset()
    device_cids: frozenset[str] = frozenset()
    serial_number: str = ""
    keyword: str = ""

    def is_empty(self) -> bool:
        """True when nothing is filtered (the fast path: pages are plain slices)."""
        return not (self.types or self.device_cids or self.serial_number or self.keyword)

    def matches(self, event: Event) -> bool:
        """Whether `event` passes every filter that is set."""
        item = event.item
        if self.types and item["type"] not in self.types:
            return False
        if self.device_cids and item["device_cid"] not in self.device_cids:
            return False
        if self.serial_number and event.device.serial_number != self.serial_number:
            return False
        if self.keyword:
            kw = self.keyword.casefold()
            # "driver name or asset id": the vehicle's name and numeric id both count.
            haystacks = (item["driver_name"], event.device.vehicle_name, str(item["car_id"]))
            if not any(kw in h.casefold() for h in haystacks):
                return False
        return True


class EventLog:
    """Visible events sorted by `(timestamp, seq)`, an index by ticket, pending media."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._by_ticket: dict[str, Event] = {}
        self._media: list[tuple[float, int, Event]] = []  # heap by media_ready_at
        self._version = 0
        self._cache: tuple[Hashable, list[Event]] | None = None

    def __len__(self) -> int:
        return len(self._events)

    @property
    def events(self) -> list[Event]:
        """A copy of the visible events, oldest first."""
        return list(self._events)

    def get(self, ticket: str) -> Event | None:
        """The visible event with this ticket, or None."""
        return self._by_ticket.get(ticket)

    def load(self, events: Iterable[Event]) -> None:
        """Add many events at once (the backlog): one sort instead of n inserts."""
        new = list(events)
        self._events.extend(new)
        self._events.sort(key=_sort_key)
        for event in new:
            self._index(event)
        self._version += 1

    def add(self, event: Event) -> None:
        """Make one event visible (late events land in the middle of the list)."""
        insort(self._events, event, key=_sort_key)
        self._index(event)
        self._version += 1

    def _index(self, event: Event) -> None:
        self._by_ticket[event.ticket] = event
        if event.media_ready_at is not None:
            heapq.heappush(self._media, (event.media_ready_at, event.seq, event))

    def discard(self, ticket: str) -> Event | None:
        """Remove an event for good; returns it, or None if unknown."""
        event = self._by_ticket.pop(ticket, None)
        if event is None:
            return None
        event.discarded = True
        i = bisect_left(self._events, event.sort_key, key=_sort_key)
        assert self._events[i] is event
        del self._events[i]
        self._version += 1
        return event

    def settle_media(self, now: float, on_ready: Callable[[Event], None]) -> None:
        """Make pending videos available whose time has come."""
        while self._media and self._media[0][0] <= now:
            _, _, event = heapq.heappop(self._media)
            # A test may have settled it by hand, or the event was discarded.
            if event.media_ready_at is None or event.discarded:
                continue
            event.settle_media()
            self._version += 1
            on_ready(event)

    def window(self, since: int, until: int) -> Sequence[Event]:
        """Events with since <= timestamp <= until, oldest first."""
        lo = bisect_left(self._events, since, key=_timestamp)
        hi = bisect_right(self._events, until, key=_timestamp)
        return self._events[lo:hi]

    def query(
        self,
        since: int,
        until: int,
        flt: EventFilter,
        *,
        descending: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list[Event]]:
        """(total matching, one page) of the window, sorted by timestamp then seq."""
        lo = bisect_left(self._events, since, key=_timestamp)
        hi = max(lo, bisect_right(self._events, until, key=_timestamp))
        if flt.is_empty():
            total = hi - lo
            if descending:
                start, stop = hi - offset - limit, hi - offset
                page = self._events[max(lo, start) : max(lo, stop)]
                page.reverse()
            else:
                page = self._events[lo + offset : min(hi, lo + offset + limit)]
            return total, page
        key = (self._version, since, until, flt)
        if self._cache is not None and self._cache[0] == key:
            matching = self._cache[1]
        else:
            matching = [e for e in self._events[lo:hi] if flt.matches(e)]
            self._cache = (key, matching)
        if descending:
            end = len(matching) - offset
            page = matching[max(0, end - limit) : max(0, end)]
            page.reverse()
        else:
            page = matching[offset : offset + limit]
        return len(matching), page
