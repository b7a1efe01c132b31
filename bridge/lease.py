"""The poll lease (SPEC §9): leader jobs run only on the replica that holds it.

The lease is a row in the store with a holder, a fencing epoch and an expiry set
by the database clock. The keeper:

- tries to take it every TTL/3 while another replica holds it, so it takes over
  within TTL + TTL/3 (< 2 x TTL) after the holder dies or freezes;
- renews it every TTL/3 while holding it;
- judges its own leadership by the local monotonic clock, from the moment it
  *sent* the last successful renewal: the database extended the lease to at
  least that moment + TTL, so stopping leader jobs at `sent + TTL - margin` is
  always before the lease can pass to anyone else — even after a freeze
  (SIGSTOP), because the monotonic clock keeps running meanwhile;
- fences the store with its epoch, so a cursor write that slips past all that
  (a poll page committing after the freeze) is rejected by the database;
- releases the lease at once on a clean stop.

SQLite has the same lease (one process always wins it), so both stores run one
code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

import structlog

from bridge.clock import Clock
from bridge.store.base import Store, StoreUnavailable

log = structlog.get_logger(__name__)


def replica_id() -> str:
    """This process's name among replicas: the host (a pod's name) and the pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class PollLease:
    """Takes, renews and gives up the poll lease; tells whether we lead now."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        replica: str,
        ttl_s: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self.replica = replica
        self._ttl = ttl_s
        # Leadership ends locally this long before the lease can expire in the
        # database: room for a slow renewal round trip and clock-rate drift.
        self._margin = min(1.0, ttl_s / 10)
        self._on_change = on_change
        self._epoch: int | None = None
        self._valid_until = float("-inf")  # monotonic
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        self._step_lock = asyncio.Lock()
        self._stopping = False

    @property
    def epoch(self) -> int | None:
        return self._epoch

    @property
    def is_leader(self) -> bool:
        """True while our lease is certainly live (by the local monotonic clock)."""
        return self._epoch is not None and self._clock.monotonic() < self._valid_until

    async def ensure(self) -> bool:
        """Lead now if we can: renew (or take) the lease when our validity has lapsed.

        A leader job due right after a long pause of the loop (or a jump of a test's
        fake clock) asks the store instead of skipping its run on a stale view.
        """
        if self.is_leader:
            return True
        for _ in range(2):  # a failed renewal, then an attempt to take it again
            with contextlib.suppress(StoreUnavailable):
                await self.step()
            if self.is_leader:
                return True
        return False

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="poll-lease")

    async def stop(self) -> None:
        """Stop renewing and give the lease up at once (another replica takes over).

        Bounded: the release gets one renewal period; a lease not released expires
        by itself within the TTL.
        """
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # `wait`, not `await task`: a cancellation of our caller must propagate,
            # never be taken for the keeper's own.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.error("poll lease keeper failed", exc_info=task.exception())
        epoch, self._epoch = self._epoch, None
        self._set_leading(False)
        if epoch is not None:
            try:
                async with asyncio.timeout(self._ttl / 3):
                    await self._store.release_lease(self.replica, epoch)
            except (StoreUnavailable, TimeoutError):
                log.warning(
                    "poll lease not released; it expires by itself",
                    replica=self.replica,
                    epoch=epoch,
                    ttl_s=self._ttl,
                )
            else:
                log.info("poll lease released", replica=self.replica, epoch=epoch)

    async def step(self) -> None:
        """One round: renew if we hold the lease, else try to take it."""
        async with self._step_lock:  # the loop and `ensure` never race each other
            await self._step()

    async def _step(self) -> None:
        sent = self._clock.monotonic()
        epoch = self._epoch
        try:
            if epoch is not None:
                lease = await self._store.renew_lease(self.replica, epoch, self._ttl)
            else:
                lease = await self._store.acquire_lease(self.replica, self._ttl)
        except StoreUnavailable:
            lease = None  # the store logs the outage once; validity runs out by itself
        else:
            if epoch is not None and lease is None:
                self._lost("the lease was taken over or expired")
        if lease is not None:
            if epoch is None:
                self._epoch = lease.epoch
                self._store.set_fence(self.replica, lease.epoch)
                log.info("poll lease acquired", replica=self.replica, epoch=lease.epoch)
            self._valid_until = sent + self._ttl - self._margin
        self._check()

    def _check(self) -> None:
        """Stop leading once the local validity has run out (renewals failing)."""
        if self._epoch is not None and not self.is_leader:
            self._lost("the lease could not be renewed in time")
        self._set_leading(self.is_leader)

    def _lost(self, reason: str) -> None:
        log.warning("poll lease lost", replica=self.replica, epoch=self._epoch, reason=reason)
        self._epoch = None
        self._valid_until = float("-inf")
        self._set_leading(False)

    def _set_leading(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            if self._on_change is not None:
                self._on_change(leading)

    async def _run(self) -> None:
        period = self._ttl / 3
        while not self._stopping:
            try:
                # A renewal stuck on a dead connection must not outlive our validity.
                # `timeout`, not `wait_for`: on Python 3.11, wait_for drops a
                # cancellation that arrives just as the round completes, and the loop
                # (and `stop()`, which awaits it) would go on for good.
                async with asyncio.timeout(period):
                    await self.step()
            except TimeoutError:
                pass
            except Exception:  # the keeper must survive anything; leadership is re-judged
                log.exception("poll lease step failed")
            # Wake in time to stop leader jobs before the lease can expire, even
            # when the renewal itself hangs longer than a period.
            wait = period
            if self._epoch is not None:
                wait = max(0.0, min(period, self._valid_until - self._clock.monotonic()))
            await self._clock.sleep(wait)
            self._check()
