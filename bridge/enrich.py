"""Enrichment of a batch of events before it is stored (SPEC §5.1): video links, detail.

Both fetches happen between normalize and the ingest transaction, because their
results belong in the notification that transaction stores, and no network wait
may hold the store:

- **video links** (`poll.events.video_links`, default on): `bridge.video_links`
  decides which sightings fetch `GetVideoDetail` and how the outcome enters
  `media.videos` and the ticket's fingerprint;
- **detail** (`poll.events.detail`, default off): a new ticket's detailV2 records go
  into `data.detail` of its `event.created` as they come; null when the fetch
  fails, and never retried (it is not a revision field).

Which tickets are new, or owe a fetch, is read from the store first, in one short
transaction that only reads, and only when the batch holds a candidate. The ingest
transaction decides again with what it reads itself, so a race with the other ingest
path (push vs poll) costs at most a spare fetch, never a wrong revision.

An alert is never held back: each fetch is one attempt (no in-call backoff; video
links have their own retry, the next re-scan), at most 4 run at once (inside the
upstream client's `max_requests_per_s`, which paces them with every other vendor
request), and the batch waits for them at most `upstream.timeout_s` in all; a fetch
cut off by that deadline counts as failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import structlog
from prometheus_client import Counter

from bridge.clock import Clock
from bridge.metrics import Metrics
from bridge.normalize import NormalizedEvent
from bridge.notifications import dumps
from bridge.settings import EventsPoll
from bridge.store.base import IngestTx, SeenTicket, Store
from bridge.upstream.client import EVENT_DETAIL as DETAIL_ENDPOINT
from bridge.upstream.client import UpstreamClient
from bridge.upstream.errors import UpstreamError
from bridge.video_links import fetch_videos, wants_videos, with_videos

log = structlog.get_logger(__name__)

MAX_CONCURRENT_FETCHES: Final = 4
"""Enrichment requests in flight at once (SPEC §5.1), across both ingest paths."""

DETAIL_MAX_BYTES: Final = 256 * 1024
"""Larger detailV2 records are left out (`detail: null`): every target would carry
them, and brokers and receivers cap message sizes (Mosquitto's default is 256 MB,
many receivers take 1 MB); the vendor documents no bound."""

_T = TypeVar("_T")


class _Outcomes:
    """One kind of fetch: counts outcomes; logs a failing streak once, and its end."""

    def __init__(self, counter: Counter, what: str, then: str) -> None:
        self._counter = counter
        self._what = what
        self._then = then
        self._failing = False

    def ok(self) -> None:
        self._counter.labels(outcome="ok").inc()
        if self._failing:
            self._failing = False
            log.info(f"{self._what} recovered")

    def failed(self, ticket: str, fields: dict[str, object]) -> None:
        self._counter.labels(outcome="failed").inc()
        if not self._failing:
            self._failing = True
            log.warning(f"{self._what} unavailable ({self._then})", ticket=ticket, **fields)


class EventEnricher:
    """Adds `media.videos` and `data.detail` to the events of one batch."""

    def __init__(
        self,
        cfg: EventsPoll,
        client: UpstreamClient,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        deadline_s: float,
    ) -> None:
        self._video_links = cfg.video_links
        self._max_age_s = cfg.video_links_max_age_s
        self._detail = cfg.detail
        self._client = client
        self._store = store
        self._clock = clock
        self._deadline_s = deadline_s
        # One pool for both paths: the poll and the push worker share the budget.
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_FETCHES)
        self._videos_outcomes = _Outcomes(
            metrics.video_link_fetches, "video links", "retried on the next re-scan"
        )
        self._detail_outcomes = _Outcomes(
            metrics.event_detail_fetches, "event detail", "sent without it"
        )

    @property
    def enabled(self) -> bool:
        """False when neither video links nor detail are configured (nothing to do)."""
        return self._video_links or self._detail

    async def enrich(self, events: list[NormalizedEvent]) -> list[NormalizedEvent]:
        """`events` with fetched video links and detail applied (same order)."""
        now = self._clock.now()
        candidates = [e for e in events if self._may_want_videos(e, now)]
        if not candidates and not self._detail:
            return events
        tickets = list({e.ticket: None for e in (events if self._detail else candidates)})
        known = await self._seen(tickets)

        video_tickets = {
            e.ticket
            for e in candidates
            if wants_videos(e, known.get(e.ticket), now, self._max_age_s)
        }
        detail_tickets = {e.ticket for e in events if self._detail and e.ticket not in known}
        if not video_tickets and not detail_tickets:
            return events

        deadline = asyncio.get_running_loop().time() + self._deadline_s
        client = self._client
        videos, details = await asyncio.gather(
            self._fetch_all(
                video_tickets, deadline, self._videos_outcomes, lambda t: fetch_videos(client, t)
            ),
            self._fetch_all(detail_tickets, deadline, self._detail_outcomes, self._fetch_detail),
        )
        out = []
        for ev in events:
            if ev.ticket in videos:
                ev = with_videos(ev, videos[ev.ticket])
            if details.get(ev.ticket) is not None:
                ev = dataclasses.replace(ev, data={**ev.data, "detail": details[ev.ticket]})
            out.append(ev)
        return out

    async def _fetch_detail(self, ticket: str) -> list[dict[str, Any]]:
        # One attempt: detail is never retried (SPEC §5.1).
        records = await self._client.event_detail(ticket, retry=False)
        size = len(dumps(records).encode())
        if size > DETAIL_MAX_BYTES:
            raise UpstreamError(
                f"detail of {size} bytes is over {DETAIL_MAX_BYTES}", endpoint=DETAIL_ENDPOINT
            )
        return records

    def _may_want_videos(self, ev: NormalizedEvent, now: float) -> bool:
        # The cheap part of `wants_videos`, so a batch without one reads nothing.
        media = ev.data.get("media")
        return (
            self._video_links
            and isinstance(media, dict)
            and media.get("has_video") is True
            and now - ev.occurred_at <= self._max_age_s
        )

    async def _seen(self, tickets: Sequence[str]) -> dict[str, SeenTicket]:
        async def read(tx: IngestTx) -> dict[str, SeenTicket]:
            return await tx.seen_tickets(tickets)

        result: dict[str, SeenTicket] = await self._store.ingest(read)
        return result

    async def _fetch_all(
        self,
        tickets: set[str],
        deadline: float,
        outcomes: _Outcomes,
        fetch: Callable[[str], Awaitable[_T]],
    ) -> dict[str, _T | None]:
        """`fetch(ticket)` for each ticket, bounded; None where it failed or ran late."""

        async def one(ticket: str) -> _T | None:
            try:
                async with asyncio.timeout_at(deadline):
                    async with self._slots:
                        result = await fetch(ticket)
            except UpstreamError as err:
                outcomes.failed(ticket, err.log_fields())
                return None
            except TimeoutError:
                outcomes.failed(ticket, {"error": "deadline", "deadline_s": self._deadline_s})
                return None
            outcomes.ok()
            return result

        ordered = list(tickets)
        return dict(zip(ordered, await asyncio.gather(*map(one, ordered)), strict=True))
