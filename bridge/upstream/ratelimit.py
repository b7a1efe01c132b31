"""Client-side pacing of calls to the vendor, on an injectable clock.

One `RateLimiter` per client: it spaces requests at least `1 / max_per_s` apart
(the vendor documents no limit, so we stay politely under one) and, when the
vendor answers 429/503 with `Retry-After`, holds back *every* call of that
client until then, not only the one that was refused.
"""

from __future__ import annotations

from bridge.clock import Clock


class RateLimiter:
    """A minimum-interval limiter with a shared hold-back deadline."""

    def __init__(self, max_per_s: float, clock: Clock) -> None:
        if max_per_s <= 0:
            raise ValueError("max_per_s must be positive")
        self._interval = 1.0 / max_per_s
        self._clock = clock
        self._next = float("-inf")  # monotonic time of the next free slot
        self._hold_until = float("-inf")  # monotonic deadline set by Retry-After

    @property
    def interval_s(self) -> float:
        """The minimum spacing between two requests."""
        return self._interval

    def hold(self, seconds: float) -> None:
        """Hold back every request for `seconds` from now (never shortens a hold)."""
        self._hold_until = max(self._hold_until, self._clock.monotonic() + max(0.0, seconds))

    def hold_remaining(self) -> float:
        """Seconds left on the current hold (0 when none)."""
        return max(0.0, self._hold_until - self._clock.monotonic())

    async def acquire(self) -> None:
        """Wait for the next free slot and take it."""
        # Re-check after every sleep: another caller may have taken the slot, or a
        # Retry-After may have arrived while we slept. A caller that wakes first
        # takes the slot; the others wait one more interval. That is not FIFO, but
        # it never lets two requests closer than the interval or inside a hold.
        while True:
            now = self._clock.monotonic()
            start = max(now, self._next, self._hold_until)
            if start <= now:
                self._next = now + self._interval
                return
            await self._clock.sleep(start - now)
