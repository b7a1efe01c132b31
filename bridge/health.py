"""`/healthz`, `/readyz` and `/metrics` (SPEC §7): no auth, cheap, honest."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.app import BRIDGE, Bridge
from bridge.store.base import StoreUnavailable

READY_STORE_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return web.json_response({"status": "ok"})


STALE_AFTER_INTERVALS = 3


def events_poll_stale(b: Bridge, last: float | None) -> str | None:
    """Why the events poll is stale (no success by any replica for 3 intervals), or None.

    `last` is the last successful events poll by any replica (the store has it).
    Shown in `/api/v1/status`, `bridge_poll_stale` and the chart's alert, never by
    readiness (SPEC §7): a vendor outage must not take the push endpoint and the admin
    API off the Service.
    """
    if b.events_poller is None:
        return None
    interval = b.settings.poll.events.interval_s
    since = b.started_at if last is None else last
    age = b.clock.now() - since
    if age <= STALE_AFTER_INTERVALS * interval:
        return None
    if last is None:
        return f"no successful events poll in the {age:.0f}s since start"
    return f"last successful events poll {age:.0f}s ago"


async def readiness_problems(b: Bridge) -> list[str]:
    """Why the bridge is not ready (empty when it is): the store and the scheduler only."""
    problems: list[str] = []
    if b.store is None:
        problems.append("store not open")
    else:
        try:
            async with asyncio.timeout(READY_STORE_TIMEOUT_S):
                await b.store.ping()
        except (StoreUnavailable, TimeoutError) as err:
            problems.append(f"store not answering: {err or 'timeout'}")
    if b.scheduler is None or not b.scheduler.running:
        problems.append("scheduler not running")
    return problems


async def readyz(request: web.Request) -> web.Response:
    """200 when the store answers and the scheduler runs; else 503 with the reasons.

    A stale events poll is not a readiness problem (SPEC §7): a vendor outage must
    not take the push endpoint and the admin API off the Service, and only one
    replica polls at all. It shows in /api/v1/status, bridge_poll_stale and
    bridge_cursor_lag_seconds.
    """
    problems = await readiness_problems(request.app[BRIDGE])
    if problems:
        return web.json_response({"status": "unavailable", "reasons": problems}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; queue depth is read from the store at scrape time."""
    b = request.app[BRIDGE]
    if b.store is not None:
        try:
            async with asyncio.timeout(READY_STORE_TIMEOUT_S):
                counts = await b.store.queue_counts()
        except (StoreUnavailable, TimeoutError):
            counts = {}
        for target in b.dispatchers:
            for state in ("pending", "in_flight", "dead"):
                b.metrics.queue_depth.labels(target=target, state=state).set(
                    counts.get(target, {}).get(state, 0)
                )
    # Computed at scrape time: while polls fail, nothing else would move these.
    if b.events_poller is not None:
        last = b.events_poller.status.last_success_at
        if b.ingestor is not None:
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                async with asyncio.timeout(READY_STORE_TIMEOUT_S):
                    shared = await b.ingestor.last_success("events")
                last = max((t for t in (last, shared) if t is not None), default=None)
        b.metrics.poll_stale.labels(job="events").set(1 if events_poll_stale(b, last) else 0)
        cursor = b.events_poller.status.cursor
        if cursor is not None:
            b.metrics.cursor_lag.labels(job="events").set(max(0.0, b.clock.now() - cursor))
    body = generate_latest(b.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# Also served on the few connections kept past `server.max_connections`
# (listener.CappedTCPSite): a flood of pushes or API calls must not fail the probes.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
