"""`/healthz`, `/readyz` and `/metrics` (SPEC §7): no auth, cheap, honest."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.app import BRIDGE, Bridge
from bridge.store.base import StoreUnavailable

READY_STORE_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive."""
    return web.json_response({"status": "ok"})


async def readiness_problems(b: Bridge) -> list[str]:
    """Why the bridge is not ready (empty when it is)."""
    problems: list[str] = []
    if b.store is None:
        problems.append("store not open")
    else:
        try:
            await asyncio.wait_for(b.store.ping(), READY_STORE_TIMEOUT_S)
        except (StoreUnavailable, TimeoutError) as err:
            problems.append(f"store not answering: {err or 'timeout'}")
    if b.scheduler is None or not b.scheduler.running:
        problems.append("scheduler not running")
    return problems


async def readyz(request: web.Request) -> web.Response:
    """200 when the store answers and the scheduler runs; else 503 with the reasons.

    A stale events poll is not a readiness problem (SPEC §7): a vendor outage must
    not take the push endpoint and the admin API off the Service, and only one
    replica polls at all. It shows in /api/v1/status and bridge_cursor_lag_seconds.
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
            counts = await asyncio.wait_for(b.store.queue_counts(), READY_STORE_TIMEOUT_S)
        except (StoreUnavailable, TimeoutError):
            counts = {}
        for target in b.dispatchers:
            for state in ("pending", "in_flight", "dead"):
                b.metrics.queue_depth.labels(target=target, state=state).set(
                    counts.get(target, {}).get(state, 0)
                )
    body = generate_latest(b.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
