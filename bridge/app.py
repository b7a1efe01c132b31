"""Builds the aiohttp Application: every resource in a cleanup context, routes.

Start-up order (shutdown is the reverse, which is what a graceful stop needs):
store → HTTP sessions → upstream client → dispatchers → poll lease + scheduler.
So on SIGTERM polling stops first and the poll lease is released (another replica
takes over at once), then in-flight deliveries finish within the grace period,
then sessions close, then the store is flushed and closed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import aiohttp
import structlog
from aiohttp import web

from bridge import __version__
from bridge.clock import Clock, SystemClock
from bridge.dispatch import Dispatcher, dispatch_options, orphaned_counts
from bridge.enrich import EventEnricher
from bridge.ingest import EventIngestor, Reservation, Reserve
from bridge.lease import PollLease, replica_id
from bridge.logs import SecretScrubber
from bridge.metrics import Metrics
from bridge.notifications import Notification
from bridge.pollers import EventsPoller, PollScheduler
from bridge.settings import (
    NOTIFICATION_TYPES,
    ConsoleTarget,
    MqttTarget,
    Settings,
    SlackTarget,
    WebhookTarget,
)
from bridge.store import open_store
from bridge.store.base import IngestTx, Store
from bridge.targets.base import Target
from bridge.targets.console import ConsoleSender
from bridge.targets.webhook import WebhookSender
from bridge.upstream.client import UpstreamClient

if TYPE_CHECKING:
    from bridge.clips import ClipTracker
    from bridge.push import PushIngest
    from bridge.report import SafetyReporter
    from bridge.uploads import UploadsPoller

log = structlog.get_logger(__name__)


@dataclass
class Bridge:
    """The running parts of one bridge, shared by the HTTP handlers."""

    settings: Settings
    clock: Clock
    metrics: Metrics
    stdout: TextIO
    scrubber: SecretScrubber | None = None
    store: Store | None = None
    upstream_session: aiohttp.ClientSession | None = None
    targets_session: aiohttp.ClientSession | None = None
    client: UpstreamClient | None = None
    ingestor: EventIngestor | None = None
    dispatchers: dict[str, Dispatcher] = field(default_factory=dict)
    scheduler: PollScheduler | None = None
    events_poller: EventsPoller | None = None
    started_at: float = 0.0
    upstream_clock: Clock | None = None  # pacing/backoff of vendor calls (default: clock)
    clips: ClipTracker | None = None
    push: PushIngest | None = None
    uploads: UploadsPoller | None = None
    reporter: SafetyReporter | None = None
    replica: str = field(default_factory=replica_id)
    lease: PollLease | None = None
    stop_deadline: float | None = None  # monotonic; set when the stop begins

    def stop_budget(self) -> float:
        """Seconds left of the one grace period the whole stop shares.

        The first call starts it: the HTTP drain, the running poll, the vendor push
        queue and the in-flight deliveries all fit in `server.shutdown_grace_s`
        together, not each in one of its own.
        """
        now = self.clock.monotonic()
        if self.stop_deadline is None:
            self.stop_deadline = now + self.settings.server.shutdown_grace_s
        return max(0.0, self.stop_deadline - now)


BRIDGE = web.AppKey("bridge", Bridge)


def make_target(
    cfg: WebhookTarget | SlackTarget | MqttTarget | ConsoleTarget,
    *,
    session: aiohttp.ClientSession,
    clock: Clock,
    stdout: TextIO,
    store: Store,
) -> Target:
    """The Target implementation for one target config."""
    match cfg:
        case WebhookTarget():
            return WebhookSender(cfg, clock=clock)
        case ConsoleTarget():
            return ConsoleSender(cfg, stdout)
        case SlackTarget():
            from bridge.targets.slack import SlackSender

            return SlackSender(cfg, session, store=store, clock=clock)
        case MqttTarget():
            from bridge.targets.mqtt import MqttSender

            # Several replicas share the availability topic (SPEC §6.3).
            replica = replica_id() if getattr(store, "shared", False) else None
            return MqttSender(cfg, clock=clock, replica=replica)
    raise AssertionError(cfg)


async def _begin_stop(app: web.Application) -> None:
    """Start the stop's grace period before the HTTP drain (which spends it first)."""
    app[BRIDGE].stop_budget()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    b = app[BRIDGE]
    # exclusive: a second `run` on the same SQLite file refuses to start (SPEC §9).
    b.store = open_store(b.settings.store, b.clock, exclusive=True)
    await b.store.open()
    # From here on the store is closed however start-up ends: a SIGTERM during
    # `recover` left the SQLite worker thread (not a daemon) running for good.
    try:
        released = await b.store.recover()
        if released:
            log.info("released deliveries left in flight by the last run", count=released)
        yield
    finally:
        await b.store.close()


async def _sessions_ctx(app: web.Application) -> AsyncIterator[None]:
    b = app[BRIDGE]
    headers = {"User-Agent": f"fleet-bridge/{__version__}"}
    b.upstream_session = aiohttp.ClientSession(headers=headers)
    # Targets get their own connection pool so a slow receiver cannot starve polling.
    b.targets_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=512), headers=headers
    )
    yield
    await b.targets_session.close()
    await b.upstream_session.close()


async def _pipeline_ctx(app: web.Application) -> AsyncIterator[None]:
    b = app[BRIDGE]
    assert b.store is not None
    assert b.upstream_session is not None
    assert b.targets_session is not None
    scrubber = b.scrubber
    b.client = UpstreamClient(
        b.settings.upstream,
        b.upstream_session,
        clock=b.upstream_clock or b.clock,
        on_request=b.metrics.upstream_request,
        on_token=(lambda token: scrubber.add([token])) if scrubber else None,
    )
    # auto_request rules look at what ingest stored (poll and push alike); the tracker
    # is created by the next context, so the callback looks it up when called.
    on_stored = (
        (lambda ns: b.clips.on_stored(ns) if b.clips is not None else None)
        if b.settings.clips.auto_request
        else None
    )

    async def record_candidates(tx: IngestTx, notifications: list[Notification]) -> None:
        if b.clips is not None:
            await b.clips.record_candidates(tx, notifications)

    enricher = EventEnricher(
        b.settings.poll.events,
        b.client,
        b.store,
        b.clock,
        b.metrics,
        deadline_s=b.settings.upstream.timeout_s,
    )
    b.ingestor = EventIngestor(
        b.settings,
        b.store,
        b.clock,
        b.metrics,
        on_stored=on_stored,
        in_tx=record_candidates if b.settings.clips.auto_request else None,
        enrich=enricher.enrich if enricher.enabled else None,
        # One process on the store: fresh rows go straight to the local dispatcher.
        reserve=None if b.store.shared else _reserve_in(b.dispatchers),
    )
    for cfg in b.settings.targets:
        target = make_target(
            cfg, session=b.targets_session, clock=b.clock, stdout=b.stdout, store=b.store
        )
        b.dispatchers[cfg.name] = Dispatcher(
            dispatch_options(cfg), target, b.store, b.clock, b.metrics, replica=b.replica
        )
    started: list[Dispatcher] = []
    try:
        for d in b.dispatchers.values():
            await d.start()
            started.append(d)
        await _report_orphans(b.store, b.dispatchers)
        yield
    finally:
        # Together: each target's in-flight sends get the time left, not a turn.
        budget = b.stop_budget()
        results = await asyncio.gather(*(d.stop(budget) for d in started), return_exceptions=True)
        for d, result in zip(started, results, strict=True):
            if isinstance(result, BaseException):
                log.error("dispatcher stop failed", target=d.name, exc_info=result)
        b.client.close()  # its own connections (repeatable calls); the sessions close after


def _reserve_in(dispatchers: dict[str, Dispatcher]) -> Reserve:
    """`EventIngestor`'s reserve: room in the named target's dispatcher (if it runs here)."""

    def reserve(target: str, n: int) -> Reservation | None:
        d = dispatchers.get(target)
        return None if d is None else d.reserve(n)

    return reserve


async def _report_orphans(store: Store, dispatchers: dict[str, Dispatcher]) -> None:
    """Log, once at start, pending deliveries of targets removed from the config (SPEC §4).

    They are kept (a re-added target resumes them), shown under `orphaned` in the
    status API and pruned with everything else.
    """
    orphaned = orphaned_counts(await store.queue_counts(), dispatchers)
    if orphaned:
        log.warning(
            "pending deliveries kept for targets no longer configured",
            orphaned=orphaned,
            hint="add the target again to deliver them, or they are pruned after retention",
        )


async def _clips_ctx(app: web.Application) -> AsyncIterator[None]:
    """The clip tracker (API requests, tracking, auto_request worker)."""
    from bridge.clips import ClipTracker

    b = app[BRIDGE]
    assert b.store is not None
    assert b.client is not None
    b.clips = ClipTracker(b.settings, b.store, b.client, b.clock, b.metrics)
    try:
        if b.clips.auto_enabled:
            b.clips.start()
            requeued = await b.clips.requeue_candidates()
            if requeued:
                log.info("re-queued auto clip candidates from the last run", count=requeued)
        yield
    finally:
        await b.clips.stop()


async def _push_ctx(app: web.Application) -> AsyncIterator[None]:
    """The vendor push queue and its worker; drained on shutdown."""
    from bridge.push import PushIngest

    b = app[BRIDGE]
    assert b.ingestor is not None
    assert b.store is not None
    b.push = PushIngest(
        b.settings.ingest.vendor_webhook,
        b.ingestor,
        b.clips,
        b.store,
        read_timeout_s=b.settings.server.read_timeout_s,
    )
    left = await b.push.recover()
    if left:
        log.info("queued vendor pushes stored by an earlier run", count=left)
    b.push.start()
    try:
        yield
    finally:
        await b.push.stop(b.stop_budget())


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    b = app[BRIDGE]
    assert b.client is not None
    assert b.ingestor is not None
    assert b.store is not None
    leader_gauge = b.metrics.poll_leader

    def on_lease_change(leading: bool) -> None:
        leader_gauge.set(int(leading))
        if not leading and b.scheduler is not None:
            b.scheduler.cancel_running()  # stop leader jobs before the lease can pass on

    b.lease = PollLease(
        b.store,
        b.clock,
        replica=b.replica,
        ttl_s=b.settings.store.lease_s,
        on_change=on_lease_change,
    )
    b.scheduler = PollScheduler(b.clock, gate=b.lease.ensure)
    b.events_poller = EventsPoller(
        b.settings.poll.events,
        b.client,
        b.ingestor,
        b.clock,
        b.metrics,
        max_requests_per_s=b.settings.upstream.max_requests_per_s,
    )
    b.scheduler.add_interval(
        "events",
        b.events_poller.run_once,
        b.settings.poll.events.interval_s,
        stop=b.events_poller.request_stop,
    )
    poll = b.settings.poll
    if b.clips is not None:
        b.scheduler.add_interval("clips", b.clips.run_once, poll.clips.interval_s)
    if poll.manual_uploads.enabled:
        from bridge.uploads import UploadsPoller

        b.uploads = UploadsPoller(b.settings, b.store, b.client, b.clock, b.metrics)
        b.scheduler.add_interval(
            "manual_uploads", b.uploads.run_once, poll.manual_uploads.interval_s
        )
    if poll.safety_report.enabled:
        from bridge.report import SafetyReporter, cron_trigger

        b.reporter = SafetyReporter(
            b.settings, b.store, b.client, b.clock, b.metrics, b.ingestor.table
        )
        b.scheduler.add_cron("safety_report", b.reporter.run_once, cron_trigger(poll.safety_report))
    b.scheduler.add_interval("prune", lambda: prune_store(b), PRUNE_INTERVAL_S)
    polled = {
        "events": True,
        "manual_uploads": poll.manual_uploads.enabled,
        "safety_report": poll.safety_report.enabled,
    }
    b.metrics.start_series(types=NOTIFICATION_TYPES, jobs=[j for j, on in polled.items() if on])
    leader_gauge.set(0)
    try:
        # Take (or learn we cannot take) the lease before the first scheduled run.
        await b.lease.step()
        b.lease.start()
        b.scheduler.start()
        yield
    finally:
        await b.scheduler.stop(b.stop_budget())
        await b.lease.stop()  # releases the lease if the first step took it


PRUNE_INTERVAL_S = 3600.0


async def prune_store(b: Bridge) -> int:
    """Delete finished rows older than `store.retention_days` (never pending work)."""
    assert b.store is not None
    cutoff = b.clock.now() - b.settings.store.retention_days * 86400
    removed = await b.store.prune(cutoff)
    if removed:
        log.info("pruned old rows", removed=removed, retention_days=b.settings.store.retention_days)
    return removed


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    stdout: TextIO | None = None,
    scrubber: SecretScrubber | None = None,
    metrics: Metrics | None = None,
    poll: bool = True,
    upstream_clock: Clock | None = None,
) -> web.Application:
    """The bridge as an aiohttp Application (served by `run`, the demo and tests)."""
    from bridge.api import add_api_routes
    from bridge.health import add_health_routes
    from bridge.httpguard import guard_middleware
    from bridge.push import handle_push

    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[guard_middleware()],
    )
    clock = clock or SystemClock()
    app[BRIDGE] = Bridge(
        settings=settings,
        clock=clock,
        metrics=metrics or Metrics(),
        stdout=stdout or sys.stdout,
        scrubber=scrubber,
        started_at=clock.now(),
        upstream_clock=upstream_clock,
    )
    app.on_shutdown.append(_begin_stop)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_sessions_ctx)
    app.cleanup_ctx.append(_pipeline_ctx)
    app.cleanup_ctx.append(_clips_ctx)
    vendor_webhook = settings.ingest.vendor_webhook
    if vendor_webhook.enabled:
        app.cleanup_ctx.append(_push_ctx)
        app.router.add_post(vendor_webhook.path, handle_push)
    if poll:
        app.cleanup_ctx.append(_scheduler_ctx)
    add_health_routes(app)
    add_api_routes(app)
    return app
