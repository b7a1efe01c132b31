"""Per-target dispatcher: claim due deliveries, send, record the outcome.

One `Dispatcher` per target drains that target's queue in the store, so a slow
or dead target never delays another. Around the target's plain `send` it
composes concurrency (`max_in_flight`), the rate limit, retries with full-jitter
backoff, Retry-After holds of the whole target, pausing on 410 Gone, and metrics.

Outcomes are written in small batches (one transaction per batch) rather than
one per delivery: the rows stay `in_flight` until written, so a crash before a
flush only means those notifications are sent again (at-least-once).

A failing target is probed, not hammered (SPEC §4): after `FAILING_AFTER`
consecutive transient failures only one delivery (the oldest) goes out, at the
backoff cadence capped at `max_delay_s`; the others wait without spending
attempts. The first success ends it and makes every waiting delivery due at once.
The failing state lives in the store's target state and changes only through
atomic store operations, so it holds for the target as a whole: failures of all
replicas count towards the streak, the store gives out no ordinary claims while
the target fails, one replica wins each probe (a compare-and-set on `probe_at`),
and the first success anywhere releases the waiting deliveries on every replica.
A restart keeps probing.
While a target is paused or failing its deliveries are not attempted, so
`max_age_s` is applied to them directly (they die as they would have on a retry).

Each outcome carries its claim's token; the store ignores it once the claim has
expired. On a shared store (several replicas) the target's pause, Retry-After hold,
rate budget and in-flight cap live in the store, so they hold for the target as a
whole: sends are capped at `max_in_flight` for all replicas together by in-flight slots
the store hands out with each claim (bridge.in_flight; outcomes ride on the same
round trip), rate-limited send times are reserved in the store, and blocked state is
re-read from the store. Strict FIFO (`max_in_flight: 1`) claims only the head, under
the target's lock.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from bridge.aio import first_of, wait_at_most
from bridge.clock import Clock
from bridge.in_flight import InFlightShare
from bridge.lease import replica_id
from bridge.metrics import Metrics
from bridge.notifications import dumps
from bridge.ratelimit import RateLimiter, StoreRateLimiter
from bridge.retry import plan_after_failure
from bridge.routing import redact
from bridge.settings import RetrySettings
from bridge.store.base import (
    Delivery,
    DeliveryState,
    HandOff,
    Outcome,
    Store,
    StoreUnavailable,
    TargetState,
)
from bridge.storm_gate import StormGate, StormSettings
from bridge.streak import Streak, failure_reason
from bridge.targets.base import LazyEnvelope, SendResult, Target

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class DispatchOptions:
    """The target settings the dispatcher acts on."""

    name: str
    retry: RetrySettings
    max_in_flight: int = 8
    rate_limit_per_s: float | None = None
    redact: tuple[str, ...] = ()
    storm: StormSettings | None = None  # grouping, inhibition, quiet hours (SPEC §6.5)


class Reservation:
    """Room a dispatcher holds for fresh deliveries handed to it already claimed.

    From `Dispatcher.reserve`: the ingest inserts up to `limit` of the target's new
    rows `in_flight` under `token` (`HandOff`) and, after commit, passes them to
    `accept`; if the transaction fails or is re-run, `cancel` frees the room. Each
    settles once; later calls do nothing.
    """

    __slots__ = ("_dispatcher", "_open", "limit", "token")

    def __init__(self, dispatcher: Dispatcher, token: str, limit: int) -> None:
        self._dispatcher = dispatcher
        self.token = token
        self.limit = limit
        self._open = True

    @property
    def hand_off(self) -> HandOff:
        """What the store's ingest transaction takes for this reservation."""
        return HandOff(self.token, self.limit)

    def accept(self, deliveries: Sequence[Delivery]) -> None:
        """The rows stored under this reservation (committed): queue them for sending."""
        if self._open:
            self._open = False
            self._dispatcher._accept(self, deliveries)

    def cancel(self) -> None:
        """Nothing was stored under this reservation: free its room."""
        if self._open:
            self._open = False
            self._dispatcher._settle(self.limit)


@dataclass
class TargetHealth:
    """What the status API shows of a target."""

    failing: bool = False
    last_error: str | None = None
    last_status: int | None = None
    last_success_at: float | None = None
    delivered: int = 0


class Dispatcher:
    """Drains one target's queue until stopped.

    A feeder claims due deliveries into a small local queue; `max_in_flight`
    workers take them from there, each sending one at a time. A fixed pool of
    workers (rather than a task per delivery) keeps the per-delivery overhead low.
    """

    # Flush outcomes at least this often, or when this many are waiting.
    FLUSH_INTERVAL_S = 0.05
    FLUSH_BATCH = 200
    # Re-check the store at least this often even when nothing woke us: another
    # replica or the replay command may have queued work (SPEC §9: every 2 s).
    IDLE_RECHECK_S = 2.0
    # A claimed row is sent only while its claim has this long left; otherwise it
    # goes back (another claimer may take it once it expires).
    CLAIM_MARGIN_S = 15.0
    BUSY_RECHECK_S = 0.1
    # Consecutive transient failures after which the target is failing (SPEC §4).
    FAILING_AFTER = 5
    # How often deliveries of a paused or failing target are checked against max_age_s.
    EXPIRY_CHECK_S = 60.0

    def __init__(
        self,
        options: DispatchOptions,
        target: Target,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
        replica: str | None = None,
    ) -> None:
        self.options = options
        self.name = options.name
        self._target = target
        self._store = store
        self._clock = clock
        self._rng = rng or random.Random()
        self._shared = bool(getattr(store, "shared", False))
        self._limiter: RateLimiter | StoreRateLimiter
        if self._shared and options.rate_limit_per_s is not None:
            self._limiter = StoreRateLimiter(store, self.name, options.rate_limit_per_s, clock)
        else:
            self._limiter = RateLimiter(options.rate_limit_per_s, clock)
        self._fifo = options.max_in_flight == 1
        # Shared and not FIFO: sends need a slot of the target's max_in_flight.
        self._in_flight = (
            InFlightShare(
                options.max_in_flight,
                clock,
                margin_s=self.CLAIM_MARGIN_S,
                renew_s=self.CLAIM_MARGIN_S + self.IDLE_RECHECK_S,
            )
            if self._shared and not self._fifo
            else None
        )
        # Unique per dispatcher: the store keeps in-flight slots per (target, replica).
        self._replica = f"{replica or replica_id()}/{random.getrandbits(32):08x}"
        self._next_share_ask = 0.0
        # Claimed rows wait here for a worker; small, so little is held in flight.
        self._queue_size = 1 if self._fifo else min(128, max(32, options.max_in_flight * 4))
        if self._in_flight is not None:
            # A claim on a shared database takes milliseconds, long enough for the
            # workers to empty a small queue: claim further ahead (the cap is on sends).
            self._queue_size = min(256, max(128, options.max_in_flight * 16))
        if options.rate_limit_per_s is not None:
            # Never claim more than can be sent well within the claim's life.
            budget = int(options.rate_limit_per_s * self.CLAIM_MARGIN_S)
            self._queue_size = max(1, min(self._queue_size, budget))
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        # Fresh rows may be handed over already claimed (`reserve`): one process owns
        # the store, and nothing between claim and send (FIFO order, storm control)
        # needs to see them claimed first.
        self._takes_hand_offs = (
            not self._shared
            and not self._fifo
            and (options.storm is None or not options.storm.enabled)
        )
        self._pending_work = 0  # queued + being sent
        self._idle = asyncio.Event()
        self._idle.set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outcomes: list[Outcome] = []
        self._outcomes_written = False
        self._flush_now = asyncio.Event()
        self._outcome_waiting = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._state = TargetState()
        self._state_dirty = False  # in-memory state the store has not taken yet
        self._release_due = False  # waiting deliveries still to be made due (recovery)
        self._probe_id: int | None = None  # the delivery probing a failing target
        self._dead_logged = False  # a dead delivery was logged since the last success
        self._next_expiry_check = 0.0
        self._next_state_check = 0.0  # shared store: when to re-read the target state
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self.health = TargetHealth()
        # Even without storm control the gate flushes once at start: rows parked
        # before the target's storm settings were removed must not wait forever.
        self._storm = (
            StormGate(self.name, options.storm, store, clock, metrics)
            if options.storm is not None
            else None
        )
        # Metric children looked up once: labels() per delivery is measurable.
        m = metrics
        self._metrics = metrics
        self._m_delivered = m.deliveries.labels(target=self.name, outcome="delivered")
        self._m_retry = m.deliveries.labels(target=self.name, outcome="retry")
        self._m_dead = m.deliveries.labels(target=self.name, outcome="dead")
        self._m_paused_outcome = m.deliveries.labels(target=self.name, outcome="paused")
        self._m_seconds = m.delivery_seconds.labels(target=self.name)
        self._m_latency = m.event_to_delivery.labels(target=self.name)
        self._m_paused = m.target_paused.labels(target=self.name)
        self._m_failing = m.target_failing.labels(target=self.name)
        # Each loop that retries on its own logs a failure once per streak (SPEC §7).
        self._feed_streak = Streak(
            "dispatcher store access",
            on_failure=m.store_errors.labels(component="dispatcher").inc,
            target=self.name,
        )
        self._flush_streak = Streak(
            "recording delivery outcomes",
            on_failure=m.store_errors.labels(component="outcome_flusher").inc,
            target=self.name,
        )
        self._send_streak = Streak("target send", expected=(), target=self.name)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Load persisted state, start the target, the feeder and the workers."""
        self._state = await self._store.get_target_state(self.name)
        self._show_failing()
        self._m_paused.set(int(self._state.paused))
        self._store.subscribe(self.name, self.wake)
        await self._target.start()
        self._tasks = [
            asyncio.create_task(self._feed(), name=f"feed:{self.name}"),
            asyncio.create_task(self._flush_loop(), name=f"flush:{self.name}"),
        ]
        self._workers = [
            asyncio.create_task(self._work(), name=f"send:{self.name}:{i}")
            for i in range(self.options.max_in_flight)
        ]

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, let in-flight sends finish within `grace_s`, write outcomes."""
        self._stopping.set()
        self._wake.set()
        feeder, flusher = self._tasks
        await feeder
        # Rows claimed but not yet sent go back to pending without spending an attempt.
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            if queued is not None:
                self._give_back(queued)
        for _ in self._workers:
            self._queue.put_nowait(None)  # one stop sentinel per worker
        _, late = await asyncio.wait(self._workers, timeout=grace_s)
        for task in late:
            task.cancel()  # its row stays in_flight: recovered as pending on restart
        await asyncio.gather(*late, return_exceptions=True)
        # Never cancel the flusher mid-write: a cancelled batch would leave delivered
        # rows in_flight, to be sent again after the restart. Let it finish and exit.
        self._flush_now.set()
        self._outcome_waiting.set()
        await flusher
        await self._flush()
        await self._release_share()
        await self._target.close()

    async def _release_share(self) -> None:
        """A clean stop gives this replica's in-flight slots back at once (they would
        otherwise lapse with the claim lease)."""
        if self._in_flight is None:
            return
        try:
            await self._store.claim_share(
                self.name,
                self._clock.now(),
                0,
                max_in_flight=self.options.max_in_flight,
                replica=self._replica,
                sending=0,
                queued=0,
            )
        except StoreUnavailable as err:
            self._feed_streak.failed(err)

    def wake(self) -> None:
        """New work was stored for this target."""
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._state.paused

    @property
    def state(self) -> TargetState:
        return self._state

    @property
    def in_progress(self) -> int:
        """Deliveries claimed and not yet finished (queued here or being sent)."""
        return self._pending_work

    @property
    def reason(self) -> str | None:
        """Why the target is not delivering freely, for people (status API)."""
        state = self._state
        if state.paused:
            return f"paused: {state.paused_reason or 'until resumed'}"
        if state.failing:
            return f"failing: {self.health.last_error or 'transient failures'}"
        if state.hold_until is not None and state.hold_until > self._clock.now():
            return "held by the receiver's Retry-After"
        for streak in (self._feed_streak, self._flush_streak):
            if streak.failing:
                return failure_reason(StoreUnavailable(streak.last_error or ""))
        return None

    async def resume(self) -> bool:
        """Un-pause the target (on every replica); returns False if it was not paused."""
        resumed = await self._store.resume_target(self.name)
        self._state = replace(self._state, paused=False, paused_reason=None)
        self._m_paused.set(0)
        if resumed:
            log.info("target resumed", target=self.name)
        self.wake()
        return resumed

    async def _refresh_state(self) -> None:
        """Re-read the target state from the store (another replica may have changed it)."""
        stored = await self._store.get_target_state(self.name)
        if stored != self._state:
            self._state = stored
            self._m_paused.set(int(stored.paused))
            self._show_failing()
            if self._in_flight is not None:
                self._in_flight.wake()  # workers waiting for a slot look at the new state

    def _show_failing(self) -> None:
        self.health.failing = self._state.failing
        self._m_failing.set(int(self._state.failing))

    async def wait_idle(self) -> None:
        """Wait until nothing is queued or in flight and every outcome is written."""
        await self._idle.wait()
        await self._flush()

    # -- the feeder ----------------------------------------------------------------

    async def _feed(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._feed_once()
            except Exception as err:  # the loop must survive a store outage
                self._feed_streak.failed(err)
                await self._wait(1.0)
            else:
                self._feed_streak.ok()

    async def _feed_once(self) -> None:
        now = self._clock.now()
        if self._state_dirty:
            await self._save_state()
        if self._release_due:
            await self._release_waiting(now)
        await self._expire_if_due(now)
        hold = self._state.hold_until
        if self._shared and (self._state.paused or (hold is not None and hold > now)):
            await self._refresh_state()  # resumed elsewhere, or the hold was lifted
            hold = self._state.hold_until
        if self._state.paused:
            await self._wait(self.IDLE_RECHECK_S)
            return
        if hold is not None and hold > now:
            await self._wait(min(hold - now, self.IDLE_RECHECK_S) if self._shared else hold - now)
            return
        if self._shared and now >= self._next_state_check:
            # Under load claims never come back empty, which is when the state is
            # otherwise re-read: look now and then, so that a success here ends a
            # failure streak other replicas counted.
            self._next_state_check = now + self.IDLE_RECHECK_S
            await self._refresh_state()
        if self._state.failing:
            await self._feed_probe(now)
            return
        if self._pending_work > self._queue_size // 2 and not self._ask_share_now(now):
            # Workers are busy; they wake us when half the queue is free. Claiming
            # just the few rows freed meanwhile would cost a store round trip per
            # handful (measured: claims of 1-7 rows were a third of all claims).
            await self._wait(min(self.IDLE_RECHECK_S, self._share_wait(now)))
            return
        storm_due = math.inf
        if self._storm is not None:
            storm_due = await self._storm.flush_if_due()
        room = self._queue_size - self._pending_work
        self._wake.clear()
        claimed = await self._claim(now, room)
        if claimed and self._storm is not None:
            claimed = await self._gate(claimed)
            if not claimed:
                return  # all parked: look for more at once
        if not claimed:
            if self._shared:
                await self._refresh_state()  # paused or held by another replica?
            due = await self._store.next_due_at(self.name, fifo=self._fifo)
            # Re-check now and then even when idle: another process (a replica, the
            # replay command) may have queued work without waking us.
            wait = self.IDLE_RECHECK_S if due is None else due - self._clock.now()
            if wait <= 0:
                # Due, yet nothing to claim: other replicas hold the target's
                # in-flight budget (or the FIFO head). Their outcomes free it soon.
                wait = self.BUSY_RECHECK_S
            wait = min(wait, storm_due - self._clock.now(), self._share_wait(self._clock.now()))
            await self._wait(max(0.0, min(wait, self.IDLE_RECHECK_S)))
            return
        self._enqueue(claimed)

    async def _claim(self, now: float, room: int) -> list[Delivery]:
        if self._in_flight is None:
            return await self._store.claim(
                self.name,
                now,
                room,
                fifo=self._fifo,
                max_in_flight=self.options.max_in_flight if self._shared else None,
            )
        # In-flight slots are asked for with each claim, and waiting outcomes go along (one
        # round trip); the flush lock makes wait_idle wait for them as for any batch.
        async with self._flush_lock:
            batch, self._outcomes = self._outcomes, []
            told = self._in_flight.holding()
            try:
                got = await self._store.claim_share(
                    self.name,
                    now,
                    room,
                    max_in_flight=self.options.max_in_flight,
                    replica=self._replica,
                    sending=told,
                    queued=self._pending_work,
                    outcomes=batch,
                )
            except Exception:
                self._outcomes[:0] = batch  # kept for the next claim or flush
                raise
        self._next_share_ask = now + self.BUSY_RECHECK_S
        self._in_flight.granted(got.share, got.until, got.fair, told=told)
        return got.deliveries

    def _ask_share_now(self, now: float) -> bool:
        """Whether the share must be asked for before the workers can go on."""
        fl = self._in_flight
        if fl is None or self._pending_work == 0:
            return False
        if now >= fl.renew_at():
            return True
        return fl.wants_more(self._pending_work) and now >= self._next_share_ask

    def _share_wait(self, now: float) -> float:
        """How long the feeder may sleep before the share needs asking for."""
        fl = self._in_flight
        if fl is None:
            return math.inf
        if self._pending_work == 0:
            # Out of work, yet the store still counts slots for us (what our last claim
            # said we held): say so soon, not at the idle re-check, for the others may
            # be waiting for them. With work, the next claim comes soon anyway.
            return max(0.0, self._next_share_ask - now) if fl.overstated() else math.inf
        due = fl.renew_at()
        if fl.wants_more(self._pending_work):
            due = min(due, self._next_share_ask)
        return max(0.0, due - now)

    async def _feed_probe(self, now: float) -> None:
        """A failing target: one probe delivery at a time, when the probe is due."""
        if self._shared:
            # Another replica may have probed (the next probe time moved) or seen
            # the receiver answer (the target is no longer failing).
            self._wake.clear()
            await self._refresh_state()
            if not self._state.failing:
                return
        probe_at = self._state.probe_at or now
        if self._probe_id is not None or self._pending_work > 0:
            # The probe is out, or rows claimed before the target failed are still
            # being handed back: their outcomes wake us.
            await self._wait(self.IDLE_RECHECK_S)
            return
        if probe_at > now:
            await self._wait(min(probe_at - now, self.IDLE_RECHECK_S))
            return
        self._wake.clear()
        probe = await self._store.claim_probe(self.name, now)
        if probe is None:
            # Not due after all (another replica took it), or nothing to send.
            await self._wait(self.IDLE_RECHECK_S)
            return
        if self._storm is not None and not await self._gate([probe]):
            return  # parked by storm control: the next probe goes at once
        self._probe_id = probe.id
        self._state = replace(self._state, probe_at=probe.claim_until)
        self._enqueue([probe])

    async def _gate(self, claimed: list[Delivery]) -> list[Delivery]:
        """What storm control lets through now; it parks the rest (SPEC §6.5)."""
        assert self._storm is not None
        try:
            return await self._storm.admit(claimed)
        except Exception:
            for delivery in claimed:
                self._give_back(delivery)  # undecided: pending again, no attempt spent
            raise

    def _enqueue(self, claimed: list[Delivery]) -> None:
        self._pending_work += len(claimed)
        self._idle.clear()
        for delivery in claimed:
            self._queue.put_nowait(delivery)

    async def _expire_if_due(self, now: float) -> None:
        """Apply max_age_s to deliveries that wait on a paused or failing target."""
        if not (self._state.paused or self._state.failing) or now < self._next_expiry_check:
            return
        self._next_expiry_check = now + self.EXPIRY_CHECK_S
        expired = await self._store.expire_pending(
            self.name, now - self.options.retry.max_age_s, now
        )
        if expired:
            self._m_dead.inc(expired)
            log.warning(
                "deliveries dead after max_age_s while the target was not delivering",
                target=self.name,
                count=expired,
                paused=self._state.paused,
                failing=self._state.failing,
            )

    async def _wait(self, seconds: float | None) -> None:
        """Sleep until woken, stopped, or `seconds` of clock time pass."""
        if self._wake.is_set() or self._stopping.is_set():
            self._wake.clear()
            return
        if seconds is None:
            await self._wake.wait()
        else:
            await first_of(self._wake.wait(), self._clock.sleep(seconds))
        self._wake.clear()

    # -- the workers ----------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            if delivery is None:
                return
            slot = False  # an in-flight slot taken
            try:
                if self._stopping.is_set() or self._blocked(delivery):
                    self._give_back(delivery)
                    continue
                if self._in_flight is not None and delivery.id != self._probe_id:
                    # The probe of a failing target is the target's only send.
                    slot = await self._in_flight.acquire(self._stopping, self._blocked)
                    if not slot:
                        self._give_back(delivery)
                        continue
                await self._limiter.acquire()
                if self._blocked(delivery) or self._claim_ending(delivery):
                    self._give_back(delivery)
                    continue
                await self._attempt(delivery)
                if self._fifo:
                    # The next head is decided only after this one's outcome is stored
                    # (if the store is away, the row stays in flight and blocks the head).
                    try:
                        await self._flush()
                    except Exception as err:
                        self._flush_streak.failed(err)
            finally:
                if slot:
                    assert self._in_flight is not None
                    self._in_flight.release()
                self._done_with_one()

    # -- hand-offs from ingest ---------------------------------------------------------

    def reserve(self, n: int) -> Reservation | None:
        """Room for up to `n` fresh deliveries handed over claimed, or None.

        None unless the target could send them now (running, not paused, held or
        failing; see `_takes_hand_offs`) and its queue has room; the rows that do not
        fit stay pending and are claimed as usual. The room counts as pending work
        until the reservation is accepted or cancelled.
        """
        if not self._takes_hand_offs or not self._tasks or self._stopping.is_set():
            return None
        if self._blocked() or self._release_due:
            return None
        k = min(n, self._queue_size - self._pending_work)
        if k < 1:
            return None
        self._pending_work += k
        self._idle.clear()
        return Reservation(self, uuid.uuid4().hex, k)

    def _accept(self, reservation: Reservation, deliveries: Sequence[Delivery]) -> None:
        taken = [d for d in deliveries if d.claim == reservation.token][: reservation.limit]
        self._settle(reservation.limit - len(taken))
        if self._stopping.is_set():
            # The workers may be gone: back to pending without spending an attempt
            # (written by the last flush of stop(); otherwise recovered at start).
            self._pending_work -= len(taken)
            for delivery in taken:
                self._give_back(delivery)
            if self._pending_work == 0:
                self._idle.set()
            return
        for delivery in taken:
            self._queue.put_nowait(delivery)

    def _settle(self, unused: int) -> None:
        """Free reserved room that no row took."""
        if unused <= 0:
            return
        self._pending_work -= unused
        if self._pending_work == 0:
            self._idle.set()
        self.wake()  # room for the feeder (rows left pending, if any, are due)

    def _done_with_one(self) -> None:
        self._pending_work -= 1
        if self._pending_work <= self._queue_size // 2:
            self.wake()  # room for the feeder to claim more
        if self._pending_work == 0:
            self._idle.set()

    def _claim_ending(self, delivery: Delivery) -> bool:
        return self._clock.now() > delivery.claim_until - self.CLAIM_MARGIN_S

    def _blocked(self, delivery: Delivery | None = None) -> bool:
        hold = self._state.hold_until
        if self._state.paused or (hold is not None and hold > self._clock.now()):
            return True
        # A failing target sends its probe and nothing else.
        return self._state.failing and (delivery is None or delivery.id != self._probe_id)

    def _give_back(self, delivery: Delivery) -> None:
        """Return a claimed-but-unsent row to pending without spending an attempt."""
        if delivery.id == self._probe_id:
            self._probe_id = None  # the probe goes again when it is due
        at = self._state.hold_until or self._clock.now()
        self._queue_outcome(
            Outcome(
                delivery.id, DeliveryState.PENDING, attempts=delivery.attempts, next_attempt_at=at
            ),
            delivery,
        )

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            envelope, body = self._payload(delivery)
            started = time.perf_counter()
            result = await self._target.send(delivery, envelope, body)
            self._m_seconds.observe(time.perf_counter() - started)
        except Exception as err:  # a target bug must not kill the worker; retry later
            self._send_streak.failed(err)
            result = SendResult(ok=False, error=f"internal error: {type(err).__name__}")
        else:
            self._send_streak.ok()
        await self._record(delivery, result)

    def _payload(self, delivery: Delivery) -> tuple[Mapping[str, Any], str]:
        if not self.options.redact:
            return LazyEnvelope(delivery.body), delivery.body
        envelope = redact(json.loads(delivery.body), self.options.redact)
        return envelope, dumps(envelope)

    async def _record(self, delivery: Delivery, result: SendResult) -> None:
        now = self._clock.now()
        attempts = delivery.attempts + 1
        was_probe = delivery.id == self._probe_id
        if was_probe:
            self._probe_id = None
        self.health.last_status = result.status
        if result.ok:
            self._queue_outcome(
                # Built with its claim: `replace` per delivery is measurable.
                Outcome(
                    delivery.id,
                    DeliveryState.DELIVERED,
                    attempts,
                    status=result.status,
                    claim=delivery.claim or None,
                ),
                delivery,
            )
            self._m_delivered.inc()
            if delivery.event_at is not None:
                self._m_latency.observe(max(0.0, now - delivery.event_at))
            self.health.delivered += 1
            self.health.last_success_at = now
            self.health.last_error = None  # recovered: the status shows no stale error
            self._dead_logged = False
            await self._receiver_answered(now)
            return
        self.health.last_error = result.error
        if result.pause:
            await self._pause(f"receiver answered {result.status}: {result.error or 'gone'}")
            # The delivery stays pending and flows after the resume.
            self._queue_outcome(
                Outcome(
                    delivery.id,
                    DeliveryState.PENDING,
                    attempts,
                    status=result.status,
                    error=result.error,
                    next_attempt_at=now,
                ),
                delivery,
            )
            self._m_paused_outcome.inc()
            return
        if result.retry_after is not None:
            # Honour the receiver, but a broken Retry-After must not stall us for years.
            await self._hold(now + min(result.retry_after, self.options.retry.max_delay_s))
        outcome = plan_after_failure(
            self.options.retry,
            delivery_id=delivery.id,
            attempts=attempts,
            created_at=delivery.created_at,
            now=now,
            result=result,
            rng=self._rng,
        )
        self._queue_outcome(outcome, delivery)
        (self._m_dead if outcome.state is DeliveryState.DEAD else self._m_retry).inc()
        if outcome.state is DeliveryState.DEAD and not self._dead_logged:
            # Once until the next success: a receiver refusing everything would
            # otherwise log every delivery (the API lists each dead one).
            self._dead_logged = True
            log.warning("delivery dead", target=self.name, status=result.status, error=result.error)
        if result.retryable:
            await self._transient_failure(now, result, was_probe=was_probe)
        else:
            # A permanent answer (a 400 for this one delivery) means the receiver is up.
            await self._receiver_answered(now)

    async def _transient_failure(self, now: float, result: SendResult, *, was_probe: bool) -> None:
        """Count the failure in the store, for the target as a whole (every replica's)."""
        try:
            state, started = await self._store.target_failed(
                self.name,
                now,
                probe=was_probe,
                failing_after=self.FAILING_AFTER,
                probe_delay=self._probe_delay,
            )
        except StoreUnavailable as err:
            self._feed_streak.failed(err)  # one failure less in the streak: harmless
            return
        self._adopt_failing(state)
        if started:  # of all replicas, only the one that made it failing logs it
            log.warning(
                "target failing; probing with one delivery at a time",
                target=self.name,
                failures=state.failures,
                status=result.status,
                error=result.error,
            )

    def _adopt_failing(self, stored: TargetState) -> None:
        self._state = replace(self._state, failures=stored.failures, probe_at=stored.probe_at)
        self._show_failing()

    def _probe_delay(self, failures: int) -> float:
        """The backoff cadence of the probes: base, twice base, … capped at max_delay_s."""
        retry = self.options.retry
        probes = max(1, failures - self.FAILING_AFTER + 1)
        return float(min(retry.max_delay_s, retry.base_delay_s * 2.0 ** min(probes - 1, 60)))

    async def _receiver_answered(self, now: float) -> None:
        """The receiver works again: end a failure streak, release a failing target."""
        # This replica's view of the streak (on a shared store re-read at least every
        # IDLE_RECHECK_S): no store write per success while nothing failed.
        if self._state.failures or self._state.failing:
            self._state = replace(self._state, failures=0, probe_at=None)
            self._show_failing()
            self._release_due = True
            await self._release_waiting(now)

    async def _release_waiting(self, now: float) -> None:
        """End the streak in the store; if the target was failing, its waiting
        deliveries become due now on every replica."""
        try:
            released = await self._store.target_recovered(self.name, now)
        except StoreUnavailable as err:
            self._feed_streak.failed(err)  # the feeder tries again
            return
        self._release_due = False
        if released is not None:  # of all replicas, the one that ended it logs it
            log.info("target recovered", target=self.name)
            if released:
                log.info("waiting deliveries released", target=self.name, count=released)
        self.wake()

    async def _pause(self, reason: str) -> None:
        if self._state.paused:
            return
        self._state = replace(self._state, paused=True, paused_reason=reason, hold_until=None)
        self._m_paused.set(1)
        if self._in_flight is not None:
            self._in_flight.wake()
        # Atomic in the store: of several replicas seeing the 410, one logs it.
        try:
            changed = await self._store.pause_target(self.name, reason)
        except StoreUnavailable as err:
            self._feed_streak.failed(err)
            self._state_dirty = True  # saved with the rest once the store answers
            changed = True
        if changed:
            log.error(
                "target paused until resumed through the API", target=self.name, reason=reason
            )

    async def _hold(self, until: float) -> None:
        current = self._state.hold_until
        if current is not None and current >= until:
            return
        self._state = replace(self._state, hold_until=until)
        if self._in_flight is not None:
            self._in_flight.wake()
        try:
            await self._store.hold_target(self.name, until)  # never shortens another's hold
        except StoreUnavailable as err:
            self._feed_streak.failed(err)
            self._state_dirty = True

    async def _save_state(self) -> None:
        state = self._state
        if self._shared:
            # Pause and hold belong to the target as a whole (changed atomically by
            # pause/resume/hold); this replica's save must not undo another's.
            # So are the failure streak and probe time (changed atomically too).
            stored = await self._store.get_target_state(self.name)
            state = replace(
                state,
                paused=stored.paused,
                paused_reason=stored.paused_reason,
                hold_until=stored.hold_until,
                failures=stored.failures,
                probe_at=stored.probe_at,
            )
        await self._store.set_target_state(self.name, state)
        if state is self._state or self._shared:
            self._state_dirty = False

    # -- outcome batching ------------------------------------------------------------

    def _queue_outcome(self, outcome: Outcome, delivery: Delivery) -> None:
        if outcome.claim is None and delivery.claim:
            outcome = replace(outcome, claim=delivery.claim)
        self._outcomes.append(outcome)
        self._outcome_waiting.set()
        # In batches (or with the next claim on a shared store): the cap counts sends,
        # not rows awaiting their outcome. FIFO's worker stores each outcome itself.
        if len(self._outcomes) >= self.FLUSH_BATCH:
            self._flush_now.set()

    async def _flush_loop(self) -> None:
        while not (self._stopping.is_set() and self._flush_now.is_set()):
            # With nothing to write, sleep until an outcome (or the stop) comes instead
            # of waking 20 times a second: an idle bridge should cost next to nothing.
            await self._outcome_waiting.wait()
            await wait_at_most(self.FLUSH_INTERVAL_S, self._flush_now.wait())
            if not self._stopping.is_set():
                self._flush_now.clear()
            self._outcome_waiting.clear()  # outcomes queued during the flush set it again
            try:
                await self._flush()
            except Exception as err:
                self._outcome_waiting.set()  # the batch is back in the list: retry
                self._flush_streak.failed(err)
                if self._stopping.is_set():
                    return  # stop() makes the last attempt itself
                # Back off while failing: a store outage is not fixed by asking every 50 ms.
                await asyncio.sleep(
                    min(1.0, self.FLUSH_INTERVAL_S * 2**self._flush_streak.failures)
                )
            else:
                if self._outcomes_written:
                    self._flush_streak.ok()

    async def _flush(self) -> None:
        # One flush at a time: a caller that finds the list empty must still wait for
        # a batch another flush is writing (wait_idle promises outcomes are stored).
        async with self._flush_lock:
            if not self._outcomes:
                return
            batch, self._outcomes = self._outcomes, []
            self._outcomes_written = False
            try:
                await self._store.record_outcomes(batch, self._clock.now())
            except Exception:
                self._outcomes[:0] = batch  # keep them for the next flush
                raise
            self._outcomes_written = True
        # A retry may now be due earlier than what the feeder sleeps for; under shared
        # strict FIFO the stored outcome moves the head for every replica.
        if (self._shared and self._fifo) or any(o.state is DeliveryState.PENDING for o in batch):
            self.wake()


def dispatch_options(cfg: Any) -> DispatchOptions:
    """DispatchOptions from a target's settings."""
    return DispatchOptions(
        name=cfg.name,
        retry=cfg.retry,
        max_in_flight=cfg.max_in_flight,
        rate_limit_per_s=cfg.rate_limit_per_s,
        redact=tuple(cfg.redact),
        storm=StormSettings(group=cfg.group, inhibit=tuple(cfg.inhibit), mute=tuple(cfg.mute)),
    )


def orphaned_counts(
    counts: dict[str, dict[str, int]], configured: Mapping[str, object]
) -> dict[str, int]:
    """Unfinished deliveries of targets no longer in the config (SPEC §4), by target."""
    out: dict[str, int] = {}
    for name, c in counts.items():
        n = c.get("pending", 0) + c.get("in_flight", 0)
        if name not in configured and n > 0:
            out[name] = n
    return out
