"""The per-target rate limiter, driven by FakeClock (no real sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from conftest import wait_for

from bridge.clock import FakeClock
from bridge.ratelimit import RateLimiter


async def _settle() -> None:
    """Let woken tasks run (a few loop iterations; no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """Starts acquires and records (caller index, monotonic time) as each returns."""

    def __init__(self, limiter: RateLimiter, clock: FakeClock) -> None:
        self.limiter = limiter
        self.clock = clock
        self.done: list[tuple[int, float]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            self.tasks.append(asyncio.create_task(self._one(len(self.tasks))))

    def count_is(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.done) == n

    async def _one(self, index: int) -> None:
        await self.limiter.acquire()
        self.done.append((index, self.clock.monotonic()))


async def test_acquires_are_spaced_one_interval_apart_in_call_order(
    fake_clock: FakeClock,
) -> None:
    limiter = RateLimiter(4.0, fake_clock)  # one slot every 0.25 s
    rec = Recorder(limiter, fake_clock)
    rec.start(5)
    await wait_for(lambda: len(rec.done) == 1 and fake_clock.sleepers == 4, message="first")
    for k in range(2, 6):
        # Just short of the next slot: nobody else may pass.
        fake_clock.advance(0.125)
        await _settle()
        assert len(rec.done) == k - 1
        fake_clock.advance(0.125)
        await wait_for(rec.count_is(k), message=f"acquire {k}")
    assert rec.done == [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]


async def test_an_idle_limiter_does_not_bank_a_burst(fake_clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, fake_clock)
    await limiter.acquire()
    fake_clock.advance(10.0)
    rec = Recorder(limiter, fake_clock)
    rec.start(3)
    await wait_for(lambda: len(rec.done) == 1 and fake_clock.sleepers == 2, message="first")
    fake_clock.advance(0.5)
    await wait_for(lambda: len(rec.done) == 2, message="second")
    await _settle()
    assert len(rec.done) == 2  # the third still waits: burst is 1
    fake_clock.advance(0.5)
    await wait_for(lambda: len(rec.done) == 3, message="third")
    assert [t for _, t in rec.done] == [10.0, 10.5, 11.0]


async def test_a_slow_caller_after_the_slot_passes_goes_at_once(fake_clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, fake_clock)
    await limiter.acquire()
    fake_clock.advance(1.5)
    await asyncio.wait_for(limiter.acquire(), timeout=1)  # its slot is already due
    assert fake_clock.sleepers == 0


async def test_no_rate_means_no_waiting(fake_clock: FakeClock) -> None:
    limiter = RateLimiter(None, fake_clock)
    assert limiter.interval == 0.0
    await asyncio.wait_for(asyncio.gather(*(limiter.acquire() for _ in range(100))), timeout=1)
    assert fake_clock.sleepers == 0


async def test_a_cancelled_last_waiter_hands_its_slot_back(fake_clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, fake_clock)
    await limiter.acquire()  # slot 0
    waiter = asyncio.create_task(limiter.acquire())  # slot 1
    await wait_for(lambda: fake_clock.sleepers == 1, message="waiter parked")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    rec = Recorder(limiter, fake_clock)
    rec.start(1)  # takes slot 1 instead of slot 2
    await wait_for(lambda: fake_clock.sleepers == 1, message="next parked")
    fake_clock.advance(1.0)
    await wait_for(lambda: len(rec.done) == 1, message="next")
    assert rec.done == [(0, 1.0)]


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_rate_must_be_positive(rate: float, fake_clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate, fake_clock)
