"""A per-target send rate limit (SPEC §2 `rate_limit_per_s`).

A token bucket with a burst of one, i.e. even spacing: consecutive sends start at
least `1 / rate` seconds apart, and an idle period does not bank a burst (Slack's
"1 message per second" is meant literally). Each caller reserves its slot before it
waits, synchronously, so concurrent callers are served in call order (FIFO) without
a lock. Time comes from the injected `Clock`, so tests drive it with `FakeClock`.
"""

from __future__ import annotations

from typing import Protocol

from bridge.clock import Clock


class RateLimiter:
    """Spaces `acquire()` returns `1 / rate_per_s` apart; `rate_per_s=None` means no limit."""

    def __init__(self, rate_per_s: float | None, clock: Clock) -> None:
        if rate_per_s is not None and not rate_per_s > 0:
            raise ValueError("rate_per_s must be positive (or None for no limit)")
        self._interval = 0.0 if rate_per_s is None else 1.0 / rate_per_s
        self._clock = clock
        self._next_free: float | None = None  # monotonic time of the next free slot
        self._hold_until = float("-inf")  # monotonic deadline set by a Retry-After

    def hold(self, seconds: float) -> None:
        """Hold back every caller for `seconds` from now (never shortens a hold)."""
        self._hold_until = max(self._hold_until, self._clock.monotonic() + max(0.0, seconds))

    def hold_remaining(self) -> float:
        """Seconds left on the current hold (0 when none)."""
        return max(0.0, self._hold_until - self._clock.monotonic())

    @property
    def interval(self) -> float:
        """Seconds between two slots (0 when unlimited)."""
        return self._interval

    async def acquire(self) -> None:
        """Wait for this caller's slot (and past any hold)."""
        while (held := self.hold_remaining()) > 0:
            await self._clock.sleep(held)
        if self._interval == 0.0:
            return
        now = self._clock.monotonic()
        slot = now if self._next_free is None else max(now, self._next_free)
        self._next_free = slot + self._interval
        wait = slot - now
        if wait > 0:
            try:
                await self._clock.sleep(wait)
            except BaseException:
                # A cancelled waiter that holds the newest reservation hands it back, so
                # an abandoned send does not delay the next caller. Older slots stay
                # taken: later callers have already been scheduled after them.
                if self._next_free == slot + self._interval:
                    self._next_free = slot
                raise
        # A Retry-After that arrived while we waited still applies to us.
        while (held := self.hold_remaining()) > 0:
            await self._clock.sleep(held)


class SlotStore(Protocol):
    async def reserve_send_slot(self, target: str, now: float, interval_s: float) -> float: ...


class StoreRateLimiter:
    """The same even spacing for a target shared by several replicas: each send
    reserves its slot in the store (`reserve_send_slot`), so the spacing holds for
    the target as a whole. Wall-clock time: replicas compare slots across hosts."""

    def __init__(self, store: SlotStore, target: str, rate_per_s: float, clock: Clock) -> None:
        if not rate_per_s > 0:
            raise ValueError("rate_per_s must be positive")
        self._store = store
        self._target = target
        self._interval = 1.0 / rate_per_s
        self._clock = clock

    @property
    def interval(self) -> float:
        return self._interval

    async def acquire(self) -> None:
        """Reserve the next slot of the target and wait for it."""
        slot = await self._store.reserve_send_slot(self._target, self._clock.now(), self._interval)
        wait = slot - self._clock.now()
        if wait > 0:
            await self._clock.sleep(wait)
