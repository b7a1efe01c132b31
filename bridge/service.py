"""Process entry points: `run` (the service) and `replay` (an operator command)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import threading
from types import FrameType

import aiohttp
import structlog
from aiohttp import web

from bridge.app import build_app, make_target
from bridge.cli import EXIT_FAILURE, EXIT_OK, StartupError
from bridge.clock import SystemClock
from bridge.dispatch import Dispatcher, dispatch_options
from bridge.health import PROBE_PATHS
from bridge.listener import CappedTCPSite
from bridge.logs import configure_logging
from bridge.metrics import Metrics
from bridge.settings import ConfigError, Settings, parse_start_from
from bridge.store import open_store
from bridge.store.base import DeliveryState, StoreUnavailable

log = structlog.get_logger(__name__)


KEEPALIVE_S = 75.0
# Past `server.shutdown_grace_s`, the stop's last steps (final outcome writes, closing
# connections and the store) get this long before the process gives up on them.
STOP_MARGIN_S = 5.0


class StopWatchdog:
    """Exits the process (status 1) when a stop outlives the grace period plus a margin.

    Armed when the stop begins, and left armed until the process exits: a daemon
    thread, it also fires while the interpreter waits at exit for a thread that never
    ends (the SQLite store's worker is not a daemon). It logs what the stop was waiting
    for (the event loop's tasks, the threads still running) before it exits.
    """

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._thread is not None:
            return
        self._loop = loop
        self._thread = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        self._done.set()

    def loop_closed(self) -> None:
        """Drop the closed loop (no tasks left to report), so nothing it holds stays alive."""
        self._loop = None

    def _watch(self) -> None:
        if self._done.wait(self.limit_s):
            return
        try:
            log.error(
                "shutdown did not finish in time; exiting",
                limit_s=self.limit_s,
                tasks=_pending_tasks(self._loop),
                threads=_live_threads(),
            )
        finally:
            sys.stderr.flush()
            os._exit(EXIT_FAILURE)


def _where(coro: object) -> str:
    """Where a coroutine (chain) is suspended: the innermost frame, and the innermost
    of the bridge's own when that is another."""
    frames: list[FrameType] = []
    while coro is not None:
        f = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        f = f or getattr(coro, "ag_frame", None)
        if f is None:
            break
        frames.append(f)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if not frames:
        return "?"
    where = _frame_text(frames[-1])
    ours = [f for f in frames if f"{os.sep}bridge{os.sep}" in f.f_code.co_filename]
    if ours and ours[-1] is not frames[-1]:
        where += f" (in {_frame_text(ours[-1])})"
    return where


def _frame_text(frame: FrameType | None) -> str:
    if frame is None:
        return "?"
    path = "/".join(frame.f_code.co_filename.split("/")[-2:])
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def _pending_tasks(loop: asyncio.AbstractEventLoop | None) -> list[str]:
    if loop is None or loop.is_closed():
        return []
    try:
        tasks = list(asyncio.all_tasks(loop))
    except RuntimeError:  # the loop changed the set meanwhile; best effort
        return ["?"]
    return sorted(f"{t.get_name()}: {_where(t.get_coro())}" for t in tasks)


def _live_threads() -> list[str]:
    frames = sys._current_frames()
    return [
        f"{t.name}{' (daemon)' if t.daemon else ''}: {_frame_text(frames.get(t.ident or 0))}"
        for t in threading.enumerate()
        if t is not threading.current_thread()
    ]


def run_service(settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0."""
    scrubber = configure_logging(
        settings.logging.level, settings.logging.format, settings.secret_values()
    )
    app = build_app(settings, scrubber=scrubber)
    settle_garbage_collector()
    watchdog = StopWatchdog(settings.server.shutdown_grace_s + STOP_MARGIN_S)
    log.info(
        "starting fleet-bridge",
        targets=[t.name for t in settings.targets],
        store=settings.store.kind,
        port=settings.server.port,
    )
    try:
        _run(app, settings, watchdog)
    except StoreUnavailable as err:
        raise StartupError(f"the store cannot be opened: {err}") from None
    except OSError as err:
        raise StartupError(
            f"cannot listen on {settings.server.host}:{settings.server.port}: {err.strerror}"
        ) from None
    log.info("fleet-bridge stopped")
    return EXIT_OK


# Allocations (net of frees) of container objects between young-generation collections;
# CPython's default is 700. See settle_garbage_collector.
GC_YOUNG_THRESHOLD = 7000


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off what start-up built, and run it less often.

    Everything alive once the app is built (modules, settings, templates, the app)
    lives until exit. `gc.freeze` moves it out of the collector's generations, so a
    full collection no longer walks it: in the backlog benchmark each of those had
    stalled the event loop, and every send in flight with it, for about 20 ms.
    Per-notification objects are freed by reference counting (the collector found
    about 2,500 objects in cycles over 30,000 notifications), so collecting the young
    generation ten times less often costs little memory. Measured (bench/backlog.py,
    30k on PostgreSQL): time in the collector from 0.21 s to under 0.01 s.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (CPython on Linux and macOS), else asyncio's loop.

    A plain aiohttp client spends 5-25% less CPU per request on it
    (docs/benchmarks.md); nothing in the bridge depends on which loop runs it.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(app: web.Application, settings: Settings, watchdog: StopWatchdog) -> None:
    """`web.run_app`, but listening through `CappedTCPSite` (a connection cap).

    Same shutdown as run_app: SIGTERM/SIGINT raise GracefulExit; then the serving task
    alone is cancelled, so its `runner.cleanup()` drains in-flight work with every
    other task still running, and only after it the leftovers are cancelled. The
    watchdog bounds all of that.
    """
    loop = new_event_loop()
    main = loop.create_task(_serve(app, settings))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        watchdog.arm(loop)
        try:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
            watchdog.loop_closed()


async def _serve(app: web.Application, settings: Settings) -> None:
    server = settings.server
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=server.shutdown_grace_s,
        handle_signals=True,
        # run_app's value; the handler's own default (an hour) would let idle
        # keep-alive connections sit on the connection cap.
        keepalive_timeout=KEEPALIVE_S,
    )
    try:
        # Inside the try: a SIGTERM while the cleanup contexts start (aiohttp installs
        # the handler first) must still close those already started. Left open, the
        # SQLite store's worker thread (not a daemon) kept the process alive for good
        # after "fleet-bridge stopped".
        await runner.setup()
        site = CappedTCPSite(
            runner,
            server.host,
            server.port,
            max_connections=server.max_connections,
            header_timeout_s=server.read_timeout_s,
            probe_paths=PROBE_PATHS,
        )
        await site.start()
        await asyncio.Event().wait()  # until SIGTERM/SIGINT (GracefulExit) cancels us
    finally:
        await runner.cleanup()


def run_replay(settings: Settings, target: str, since: str, until: str | None) -> int:
    """Queue stored notifications of [since, until] again for one target, and deliver them."""
    configure_logging(settings.logging.level, settings.logging.format, settings.secret_values())
    try:
        cfg = settings.target(target)
    except KeyError:
        raise ConfigError([f"--target: no target named {target!r}"]) from None
    clock = SystemClock()
    now = clock.now()
    try:
        start = parse_start_from(since, now)
        end = parse_start_from(until, now) if until else now
    except ValueError as err:
        raise ConfigError([f"--since/--until: {err}"]) from None
    queued, left = asyncio.run(_replay(settings, cfg, start, end))
    print(f"replayed {queued} notification(s) to {target}; {left} still pending")
    return EXIT_OK


async def _replay(settings: Settings, cfg: object, since: float, until: float) -> tuple[int, int]:
    clock = SystemClock()
    store = open_store(settings.store, clock)
    try:
        await store.open()
    except StoreUnavailable as err:
        raise StartupError(f"the store cannot be opened: {err}") from None
    try:
        name = cfg.name  # type: ignore[attr-defined]
        queued = await store.replay(name, since, until, clock.now())
        async with aiohttp.ClientSession() as session:
            target = make_target(cfg, session=session, clock=clock, stdout=sys.stdout, store=store)  # type: ignore[arg-type]
            dispatcher = Dispatcher(dispatch_options(cfg), target, store, clock, Metrics())
            await dispatcher.start()
            try:
                # Deliver what is due now; anything left for later is the service's.
                # This polls the store: a running service may claim some of the work.
                due = await store.next_due_at(name, fifo=False)
                while due is not None and due <= clock.now():
                    await asyncio.sleep(0.05)
                    due = await store.next_due_at(name, fifo=False)
                await dispatcher.wait_idle()
            finally:
                await dispatcher.stop(settings.server.shutdown_grace_s)
        counts = await store.queue_counts()
        left = counts.get(name, {}).get(DeliveryState.PENDING.value, 0)
        return queued, left
    finally:
        await store.close()
