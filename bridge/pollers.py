"""Poll jobs: the events poller and the scheduler that runs poll jobs.

The events poller's only duty is to get items into the store and then move its
cursor (SPEC §5.1): windows `[cursor - lookback_s, now]` split by `max_window_s`,
each paged with offset/limit to the end, the cursor moved to a window's end only
after all of the window's items are stored. De-dup absorbs every overlap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bridge.clock import Clock, SystemClock
from bridge.ingest import EventIngestor, IngestStats
from bridge.metrics import Metrics
from bridge.settings import EventsPoll, parse_start_from
from bridge.store.base import StoreUnavailable
from bridge.upstream.client import UpstreamClient
from bridge.upstream.errors import UpstreamError

log = structlog.get_logger(__name__)


def poll_windows(start: float, end: float, max_window_s: float) -> Iterator[tuple[int, int]]:
    """Split [start, end] into inclusive whole-second windows of at most max_window_s.

    Windows share their boundary second: the vendor's since/until are inclusive,
    and an item at a boundary seen twice is absorbed by de-dup (never skipped).
    """
    lo, hi = int(start), int(end)
    step = max(1, int(max_window_s))
    if lo >= hi:
        yield (hi, hi)
        return
    while lo < hi:
        upper = min(lo + step, hi)
        yield (lo, upper)
        lo = upper


@dataclass
class PollerStatus:
    """What the status API and readiness read of a poller."""

    last_run_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    cursor: float | None = None
    failing: bool = False


class EventsPoller:
    """Fetches `/V2/events` windows and hands each page to the ingestor."""

    job = "events"

    def __init__(
        self,
        cfg: EventsPoll,
        client: UpstreamClient,
        ingestor: EventIngestor,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._cfg = cfg
        self._client = client
        self._ingestor = ingestor
        self._clock = clock
        self._metrics = metrics
        self.status = PollerStatus()

    async def run_once(self) -> IngestStats:
        """One poll run: every window from the cursor to now, then the cursor moved."""
        started = time.perf_counter()
        now = self._clock.now()
        self.status.last_run_at = now
        total = IngestStats()
        windows = 0
        try:
            cursor = await self._ingestor.get_cursor(self.job)
            if cursor is None:
                cursor = parse_start_from(self._cfg.start_from, now)
            for since, until in poll_windows(
                cursor - self._cfg.lookback_s, now, self._cfg.max_window_s
            ):
                windows += 1
                await self._scan_window(since, until, total)
                # Everything up to `until` is stored: only now may the cursor pass it.
                if until > cursor:
                    cursor = float(until)
                    await self._ingestor.move_cursor(self.job, cursor)
                    self.status.cursor = cursor
        except UpstreamError as err:
            self._failed(err.log_fields(), str(err), started, total)
            raise
        except Exception as err:
            self._failed({"error": type(err).__name__}, str(err), started, total)
            raise
        duration = time.perf_counter() - started
        self._metrics.poll_runs.labels(job=self.job, outcome="success").inc()
        self._metrics.poll_duration.labels(job=self.job).observe(duration)
        self._metrics.cursor_lag.labels(job=self.job).set(max(0.0, self._clock.now() - cursor))
        self.status.last_success_at = self._clock.now()
        self.status.last_error = None
        # Shared with every replica: the status API shows the last success of any.
        await self._ingestor.note_success(self.job, self.status.last_success_at)
        if self.status.failing:
            self.status.failing = False
            log.info("poll recovered", job=self.job)
        log.info(
            "poll run",
            job=self.job,
            fetched=total.fetched,
            new=total.created,
            updated=total.updated,
            duplicates=total.duplicates,
            malformed=total.malformed,
            windows=windows,
            cursor=int(cursor),
            duration_s=round(duration, 3),
        )
        return total

    async def _scan_window(self, since: int, until: int, total: IngestStats) -> None:
        pages = self._client.iter_event_pages(
            since=since,
            until=until,
            types=self._cfg.types,
            device_cids=self._cfg.device_cids,
            serial_number=self._cfg.serial_number,
        )
        async for page in pages:
            self._metrics.items_fetched.labels(job=self.job).inc(len(page.items))
            if page.items:
                total.add(await self._ingestor.ingest(page.items, job=self.job))

    def _failed(
        self, fields: dict[str, Any], message: str, started: float, total: IngestStats
    ) -> None:
        self._metrics.poll_runs.labels(job=self.job, outcome="failure").inc()
        self._metrics.poll_duration.labels(job=self.job).observe(time.perf_counter() - started)
        self.status.last_error = message
        if not self.status.failing:
            self.status.failing = True
            log.warning("poll failed", job=self.job, stored_before_failure=total.created, **fields)


class PollScheduler:
    """APScheduler 3 wrapper that can wait for a running job on shutdown.

    APScheduler 3.x cancels a running asyncio job when it shuts down; we pause it,
    await the running poll (bounded by the grace period), then shut it down.
    """

    def __init__(
        self, clock: Clock | None = None, *, gate: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._clock: Clock = clock or SystemClock()
        # Leader jobs run only while `gate()` is true (the poll lease, SPEC §9).
        self._gate = gate
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._jobs: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Last run / success / error of every job, for the status API.
        self.status: dict[str, PollerStatus] = {}

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def add_interval(self, name: str, fn: Callable[[], Awaitable[Any]], seconds: float) -> None:
        """Run `fn` now and then every `seconds`, never two at once, missed runs coalesced."""
        self._jobs[name] = fn
        self._scheduler.add_job(
            self._run_job,
            IntervalTrigger(seconds=seconds),
            args=[name],
            id=name,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=_utcnow(),
        )

    def add_cron(self, name: str, fn: Callable[[], Awaitable[Any]], trigger: Any) -> None:
        """Run `fn` on a cron trigger."""
        self._jobs[name] = fn
        self._scheduler.add_job(
            self._run_job, trigger, args=[name], id=name, max_instances=1, coalesce=True
        )

    async def run_now(self, name: str) -> Any:
        """Run a job now (API trigger); waits for a run already under way first."""
        return await self._run_job(name)

    async def may_run(self) -> bool:
        """True when this replica may run leader jobs now."""
        return self._gate is None or await self._gate()

    def cancel_running(self) -> None:
        """Cancel running jobs at once (the poll lease was lost: another replica leads)."""
        for task in self._running.values():
            task.cancel()

    async def _run_job(self, name: str) -> Any:
        # One run of a job at a time, whoever starts it (scheduler or API).
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not await self.may_run():
                return None  # another replica holds the poll lease
            status = self.status.setdefault(name, PollerStatus())
            status.last_run_at = self._clock.now()
            task = asyncio.ensure_future(self._jobs[name]())
            self._running[name] = task
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled() and not self._cancelling():
                    return None  # cancelled by `cancel_running`: leadership ended
                raise
            except UpstreamError as err:
                status.last_error, status.failing = str(err), True
                return None  # already logged by the poller (once per failing streak)
            except StoreUnavailable as err:
                status.last_error, status.failing = str(err), True
                return None  # the store logs the outage once, not every run
            except Exception as err:
                status.last_error, status.failing = f"{type(err).__name__}: {err}", True
                log.exception("poll job crashed", job=name)
                return None
            finally:
                if task.done():
                    self._running.pop(name, None)
            status.last_success_at = self._clock.now()
            status.last_error, status.failing = None, False
            return result

    @staticmethod
    def _cancelling() -> bool:
        current = asyncio.current_task()
        return current is not None and current.cancelling() > 0

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self, grace_s: float) -> None:
        """Pause, wait for running jobs up to `grace_s`, then shut down."""
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        running = [t for t in self._running.values() if not t.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._scheduler.shutdown(wait=False)


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
