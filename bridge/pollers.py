"""Poll jobs: the events poller and the scheduler that runs poll jobs.

The events poller's only duty is to get items into the store and then move its
cursor (SPEC §5.1). Each run has two parts:

* the **head**: windows `[cursor - head_lookback_s, now]` (split by `max_window_s`),
  each paged with offset/limit to the end; the cursor moves to a window's end only
  after all of its items are stored. This is what keeps new events within
  twice `interval_s` however busy the fleet is: it reads only what is new.
* the **re-scan** of the `lookback_s` window (devices upload late, media changes):
  a sweep that starts every `rescan_interval_s` and reads at most `rescan_budget *
  max_requests_per_s * interval_s` pages per run, continuing in the next run where
  it stopped. So a busy fleet stretches the sweep over several runs instead of each
  run re-reading the whole window (issue #9: 17,080 items fetched per run to find
  715 new ones), and the re-scan never takes more than its share of the vendor budget.

What a sweep reads: every head run from cursor `c` leaves `[c - lookback_s, c]` to
re-scan (an item up to `lookback_s` late may still arrive there), and a sweep
starting at cursor `T` adds `[T - lookback_s, T]`. Those intervals, merged, are the
sweep's windows: in steady operation one window of about `lookback_s` plus the time
since the last sweep; after an outage or a restart two short ones around its ends,
not the whole gap (the head read the gap). The start of the last finished sweep is
stored (cursor `events:rescan`), so after a restart `[that - lookback_s, cursor]` is
owed again. De-dup absorbs every overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bridge.clock import Clock, SystemClock
from bridge.ingest import EventIngestor, IngestStats
from bridge.metrics import Metrics
from bridge.reseen import KnownPage
from bridge.settings import EventsPoll, parse_start_from
from bridge.store.base import StoreUnavailable
from bridge.streak import failure_reason
from bridge.upstream.client import Page, UpstreamClient
from bridge.upstream.errors import UpstreamError

log = structlog.get_logger(__name__)

RESCAN_SUFFIX = ":rescan"


def poll_windows(
    start: float, end: float, max_window_s: float, *, aligned: bool = False
) -> Iterator[tuple[int, int]]:
    """Split [start, end] into inclusive whole-second windows of at most max_window_s.

    Windows share their boundary second: the vendor's since/until are inclusive,
    and an item at a boundary seen twice is absorbed by de-dup (never skipped).
    `aligned`: inner boundaries fall on multiples of max_window_s, so successive
    sweeps of a moving window read the same inner windows, page for page (what
    lets an unchanged page be recognized unparsed: bridge/reseen.py), for at most
    one window more.
    """
    lo, hi = int(start), int(end)
    step = max(1, int(max_window_s))
    if lo >= hi:
        yield (hi, hi)
        return
    while lo < hi:
        upper = min((lo // step + 1) * step if aligned else lo + step, hi)
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
    reason: str | None = None  # why it is failing, for people: "auth failed", …


@dataclass
class _Sweep:
    """A re-scan in progress: its windows and the page iterator of the current one."""

    base: float  # the cursor when it started: the next sweep starts at base - lookback_s
    windows: list[tuple[int, int]]
    pages: AsyncIterator[Page] | None = None
    fetched: int = 0
    requests: int = 0
    started_mono: float = 0.0


class _Stopped(Exception):
    """Shutdown asked the poll to stop at the next page boundary."""


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
        *,
        max_requests_per_s: float | None = None,
    ) -> None:
        self._cfg = cfg
        self._client = client
        self._ingestor = ingestor
        self._clock = clock
        self._metrics = metrics
        self.status = PollerStatus()
        self._stopping = False
        self._head_back = min(cfg.head_lookback_s, cfg.lookback_s)
        # Pages the re-scan may read per run: its share of the vendor budget over one
        # interval (at least one, or a sweep would never end) and, with the head's
        # pages, no more than fit in 90% of the interval, so a run ends in time.
        if max_requests_per_s is None:
            self._rescan_pages = self._run_pages = 1_000_000
        else:
            share = cfg.rescan_budget * max_requests_per_s * cfg.interval_s
            self._rescan_pages = max(1, int(share))
            self._run_pages = max(1, int(0.9 * max_requests_per_s * cfg.interval_s))
        self._sweep: _Sweep | None = None
        self._pages_this_run = 0
        self._rescan_loaded = False
        self._owed: list[tuple[float, float]] = []  # merged intervals the next sweep reads
        self._last_sweep_mono: float | None = None

    @property
    def rescan_pages_per_run(self) -> int:
        """The re-scan's page budget per run."""
        return self._rescan_pages

    def request_stop(self) -> None:
        """Stop at the next page boundary (SIGTERM): the cursor stays at the last stored window."""
        self._stopping = True

    async def run_once(self) -> IngestStats:
        """One poll run: the head windows (cursor moved after each), then a slice of the re-scan."""
        started = time.perf_counter()
        now = self._clock.now()
        self.status.last_run_at = now
        total = IngestStats()
        self._pages_this_run = 0
        windows = 0
        rescan_done = False
        cursor: float | None = None
        try:
            stored = await self._ingestor.get_cursor(self.job)
            fresh = stored is None
            cursor = parse_start_from(self._cfg.start_from, now) if stored is None else stored
            if not self._rescan_loaded:
                await self._load_rescan(cursor, fresh=fresh)
            self._owe(cursor)
            for since, until in poll_windows(cursor - self._head_back, now, self._cfg.max_window_s):
                windows += 1
                await self._scan_window(since, until, total)
                # Everything up to `until` is stored: only now may the cursor pass it. The
                # first poll stores its cursor whatever start_from said (issue #9: with
                # `now` the float start was never passed by a whole-second window end,
                # so no cursor was ever stored and any outage lost its older part).
                moved = max(cursor, float(until))
                if fresh or moved > cursor:
                    cursor, fresh = moved, False
                    await self._ingestor.move_cursor(self.job, cursor)
                    self.status.cursor = cursor
            self.status.cursor = cursor
            rescan_done = await self._rescan(cursor, total)
        except _Stopped:
            log.info("poll stopped at a page boundary for shutdown", job=self.job, cursor=cursor)
            return total
        except (UpstreamError, StoreUnavailable) as err:
            fields = err.log_fields() if isinstance(err, UpstreamError) else {"error": str(err)}
            self._failed(fields, err, started, total)
            raise
        except Exception as err:
            self._failed({"error": type(err).__name__}, err, started, total)
            raise
        duration = time.perf_counter() - started
        self._metrics.poll_runs.labels(job=self.job, outcome="success").inc()
        self._metrics.poll_duration.labels(job=self.job).observe(duration)
        self._metrics.cursor_lag.labels(job=self.job).set(max(0.0, self._clock.now() - cursor))
        self.status.last_success_at = self._clock.now()
        self.status.last_error = None
        self.status.reason = None
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
            rescan="done" if rescan_done else ("running" if self._sweep else "idle"),
            cursor=int(cursor),
            duration_s=round(duration, 3),
        )
        return total

    async def _scan_window(self, since: int, until: int, total: IngestStats) -> None:
        # The head is read to the end: the next page is fetched while this one is
        # stored (the re-scan, under a page budget, fetches only what it reads).
        async with contextlib.aclosing(self._pages(since, until, prefetch=True)) as pages:
            async for page in pages:
                await self._ingest_page(page, total)

    def _pages(
        self, since: int, until: int, *, prefetch: bool = False
    ) -> AsyncGenerator[Page, None]:
        return self._client.iter_event_pages(
            since=since,
            until=until,
            types=self._cfg.types,
            device_cids=self._cfg.device_cids,
            serial_number=self._cfg.serial_number,
            prefetch=prefetch,
            # A page whose every item is known unchanged comes back unparsed (the
            # steady state's re-scan: bridge/reseen.py).
            memo=self._ingestor.reseen.known_page,
        )

    async def _ingest_page(self, page: Page, total: IngestStats) -> None:
        self._pages_this_run += 1
        if page.known and not self._ingestor.reseen.holds_page(page.digest or 0):
            # Checked when it arrived (maybe prefetched); a ticket on it has changed
            # state since, so its items are judged as they would be without the memo.
            page = page.parsed()
        if page.known:
            self._metrics.items_fetched.labels(job=self.job).inc(page.received)
            total.fetched += page.received
            total.duplicates += page.received
        elif page.items:
            self._metrics.items_fetched.labels(job=self.job).inc(len(page.items))
            known = None
            if page.digest is not None and page.received == len(page.items):
                known = (page.digest, KnownPage(page.received, page.count))
            total.add(await self._ingestor.ingest(page.items, job=self.job, page=known))
        if self._stopping:
            raise _Stopped

    async def _rescan(self, cursor: float, total: IngestStats) -> bool:
        """Read up to the run's page budget of the re-scan; True when a sweep finished."""
        lookback = self._cfg.lookback_s
        if lookback <= self._head_back:
            return False  # the head already reads the whole lookback window
        if self._sweep is None:
            mono = self._clock.monotonic()
            due = (
                self._last_sweep_mono is None
                or mono - self._last_sweep_mono >= self._cfg.rescan_interval_s
            )
            if not due:
                return False
            self._owe(cursor)
            windows = [
                w
                for lo, hi in self._owed
                for w in poll_windows(lo, hi, self._cfg.max_window_s, aligned=True)
            ]
            self._owed = []
            self._sweep = _Sweep(base=cursor, windows=windows, started_mono=mono)
            self._last_sweep_mono = mono
        sweep = self._sweep
        budget = max(1, min(self._rescan_pages, self._run_pages - self._pages_this_run))
        while budget > 0:
            if sweep.pages is None:
                if not sweep.windows:
                    break
                since, until = sweep.windows[0]
                sweep.pages = self._pages(since, until)
            try:
                page = await anext(sweep.pages)
            except StopAsyncIteration:
                sweep.windows.pop(0)
                sweep.pages = None
                continue
            except BaseException:
                sweep.pages = None  # a failed iterator is finished: redo this window
                raise
            budget -= 1
            sweep.requests += 1
            sweep.fetched += len(page.items)
            await self._ingest_page(page, total)
        if sweep.windows:
            return False
        self._sweep = None
        await self._ingestor.move_cursor(self.job + RESCAN_SUFFIX, sweep.base)
        log.debug(
            "rescan finished",
            job=self.job,
            fetched=sweep.fetched,
            requests=sweep.requests,
            duration_s=round(self._clock.monotonic() - sweep.started_mono, 3),
        )
        return True

    async def _load_rescan(self, cursor: float, *, fresh: bool) -> None:
        """What the first sweep after a start owes: since the last finished sweep's start."""
        last = await self._ingestor.get_cursor(self.job + RESCAN_SUFFIX)
        self._rescan_loaded = True
        if fresh:
            # A fresh store's head reads everything since start_from: the first sweep
            # is due one rescan interval from now.
            self._last_sweep_mono = self._clock.monotonic()
            return
        start = cursor if last is None else min(last, cursor)
        self._owed = [(start - self._cfg.lookback_s, cursor)]

    def _owe(self, cursor: float) -> None:
        """Add `[cursor - lookback_s, cursor]` to what the next sweep reads (merged)."""
        if self._cfg.lookback_s <= self._head_back:
            return  # the head reads the whole lookback window itself
        lo, hi = cursor - self._cfg.lookback_s, cursor
        merged: list[tuple[float, float]] = []
        for a, b in sorted([*self._owed, (lo, hi)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._owed = merged

    def _failed(
        self, fields: dict[str, Any], err: BaseException, started: float, total: IngestStats
    ) -> None:
        self._metrics.poll_runs.labels(job=self.job, outcome="failure").inc()
        self._metrics.poll_duration.labels(job=self.job).observe(time.perf_counter() - started)
        self.status.last_error = str(err) or type(err).__name__
        reason = failure_reason(err)
        if not self.status.failing or reason != self.status.reason:
            self.status.failing = True
            log.warning(
                "poll failed",
                job=self.job,
                reason=reason,
                stored_before_failure=total.created,
                **fields,
            )
        self.status.reason = reason


# How long `stop` waits for a cancelled job (or its caller) to end before leaving it.
CANCEL_WAIT_S = 2.0


class PollScheduler:
    """APScheduler 3 wrapper that can wait for a running job on shutdown.

    APScheduler 3.x cancels a running asyncio job when it shuts down; we pause it,
    ask running jobs to stop at their next safe point, await them (bounded by the
    grace period), then shut it down. A scheduled run that finds the previous run of
    its job still going is skipped quietly (APScheduler would log a warning for it
    every interval); failures are logged once per failure streak, never per run.
    """

    def __init__(
        self, clock: Clock | None = None, *, gate: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        # Leader jobs run only while `gate()` is true (the poll lease, SPEC §9).
        self._gate = gate
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._clock: Clock = clock or SystemClock()
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._jobs: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._stop_hooks: list[Callable[[], None]] = []
        self._stopping = False
        self._callers: set[asyncio.Task[Any]] = set()  # tasks inside `_run_job`
        self._admitting: set[asyncio.Task[Any]] = set()  # of those, asking the lease
        self.skipped: dict[str, int] = {}
        # Last run / success / error of every job, for the status API.
        self.status: dict[str, PollerStatus] = {}

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def add_interval(
        self,
        name: str,
        fn: Callable[[], Awaitable[Any]],
        seconds: float,
        *,
        stop: Callable[[], None] | None = None,
    ) -> None:
        """Run `fn` now and then every `seconds`, never two at once, missed runs coalesced.

        `stop`, if given, asks a running `fn` to finish early at shutdown.
        """
        self._jobs[name] = fn
        if stop is not None:
            self._stop_hooks.append(stop)
        self._scheduler.add_job(
            self._scheduled,
            IntervalTrigger(seconds=seconds),
            args=[name],
            id=name,
            # 2, not 1: a second instance finds the job running and returns at once,
            # instead of APScheduler logging "maximum number of running instances
            # reached" every interval while a long run goes on.
            max_instances=2,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=_utcnow(),
        )

    def add_cron(self, name: str, fn: Callable[[], Awaitable[Any]], trigger: Any) -> None:
        """Run `fn` on a cron trigger."""
        self._jobs[name] = fn
        self._scheduler.add_job(
            self._scheduled, trigger, args=[name], id=name, max_instances=2, coalesce=True
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

    async def _scheduled(self, name: str) -> Any:
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked() or self._stopping:
            self.skipped[name] = self.skipped.get(name, 0) + 1
            return None
        return await self._run_job(name)

    async def _run_job(self, name: str) -> Any:
        caller = asyncio.current_task()
        assert caller is not None
        self._callers.add(caller)
        try:
            return await self._run_job_locked(name)
        finally:
            self._callers.discard(caller)

    async def _admitted(self) -> bool:
        """May a run start now? Asks the poll lease; `stop` cancels this wait at once."""
        if self._stopping:
            return False
        caller = asyncio.current_task()
        assert caller is not None
        self._admitting.add(caller)
        try:
            return await self.may_run()
        except asyncio.CancelledError:
            if self._stopping:
                return False  # shutdown: nothing ran, nothing to report
            raise
        finally:
            self._admitting.discard(caller)

    async def _run_job_locked(self, name: str) -> Any:
        # One run of a job at a time, whoever starts it (scheduler or API).
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not await self._admitted():
                return None  # shutting down, or another replica holds the poll lease
            status = self.status.setdefault(name, PollerStatus())
            status.last_run_at = self._clock.now()
            task = asyncio.ensure_future(self._jobs[name]())
            self._running[name] = task
            try:
                result = await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled() and not self._cancelling() and not self._stopping:
                    return None  # cancelled by `cancel_running`: leadership ended
                if not self._stopping:
                    raise
                # Shutdown ran out of grace: the job's cursor stays at its last stored
                # window, which is all a restart needs. Not an error worth a traceback.
                log.info("poll job cancelled at shutdown", job=name)
                return None
            except Exception as err:
                self._job_failed(name, status, err)
                return None
            finally:
                if task.done():
                    self._running.pop(name, None)
            status.last_success_at = self._clock.now()
            if status.failing:
                log.info("poll job recovered", job=name)
            status.last_error, status.failing, status.reason = None, False, None
            return result

    @staticmethod
    def _cancelling() -> bool:
        current = asyncio.current_task()
        return current is not None and current.cancelling() > 0

    def _job_failed(self, name: str, status: PollerStatus, err: Exception) -> None:
        reason = failure_reason(err)
        first = not status.failing or status.reason != reason
        status.last_error = (
            str(err)
            if isinstance(err, UpstreamError | StoreUnavailable)
            else (f"{type(err).__name__}: {err}")
        )
        status.failing, status.reason = True, reason
        if not first or name == "events":
            return  # already logged once for this streak (the events poller logs its own)
        if isinstance(err, UpstreamError | StoreUnavailable):
            # Expected conditions (vendor down, disk full): one line, no traceback.
            log.warning("poll job failed", job=name, reason=reason, error=status.last_error)
        else:
            log.exception("poll job crashed", job=name)

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self, grace_s: float) -> None:
        """Pause, ask running jobs to stop, wait for them up to `grace_s`, then shut down."""
        if not self._scheduler.running:
            return
        self._stopping = True
        self._scheduler.pause()
        # Runs not started yet (waiting for the poll lease) are called off at once;
        # left to APScheduler's shutdown, they would be cancelled halfway through a
        # lease query and each logged as a failed job.
        for caller in self._admitting:
            caller.cancel()
        for hook in self._stop_hooks:
            hook()
        running = [t for t in self._running.values() if not t.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=grace_s)
            for t in late:
                t.cancel()
            if late:
                _, stuck = await asyncio.wait(late, timeout=CANCEL_WAIT_S)
                for t in stuck:
                    log.error("poll job still running after cancel; left behind", task=repr(t))
        # Every caller returns once its run is over; then nothing is left for
        # APScheduler to cancel.
        callers = [t for t in self._callers if not t.done()]
        if callers:
            _, stuck = await asyncio.wait(callers, timeout=CANCEL_WAIT_S)
            for t in stuck:
                log.error("poll job caller did not return; left behind", task=repr(t))
        self._scheduler.shutdown(wait=False)


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
