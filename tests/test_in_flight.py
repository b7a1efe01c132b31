"""This replica's share of a target's max_in_flight (bridge/in_flight.py)."""

from __future__ import annotations

import asyncio

from bridge.clock import FakeClock
from bridge.in_flight import InFlightShare

T0 = 1_764_000_000.0


def share(clock: FakeClock) -> InFlightShare:
    return InFlightShare(4, clock, margin_s=15.0, renew_s=17.0)


async def test_a_send_starts_only_within_a_live_share() -> None:
    clock = FakeClock(start=T0)
    s = share(clock)
    stopping = asyncio.Event()
    assert not s.usable()  # nothing granted yet
    s.granted(2, T0 + 30, fair=2, told=0)
    assert await s.acquire(stopping, lambda: False)
    assert await s.acquire(stopping, lambda: False)
    assert not s.usable()  # both slots taken
    waiting = asyncio.ensure_future(s.acquire(stopping, lambda: False))
    await asyncio.sleep(0)
    assert not waiting.done()
    s.release()  # a send ended: the waiting worker goes
    assert await waiting
    clock.advance(16)  # within the margin of the share's end: nothing new starts
    s.release()
    assert not s.usable()
    stopping.set()
    assert not await s.acquire(stopping, lambda: False)


async def test_what_it_tells_the_store_covers_sends_that_may_start_meanwhile() -> None:
    # While a claim is in the air, workers may still start sends up to the current
    # share: the store must count them, or another replica could get those slots.
    clock = FakeClock(start=T0)
    s = share(clock)
    s.granted(3, T0 + 30, fair=3, told=0)
    assert s.holding() == 3  # no send under way yet, but three may start
    s.granted(1, T0 + 30, fair=1, told=0)
    s.sending = 2  # started before the smaller share came
    assert s.holding() == 2
    clock.advance(20)  # the share lapsed: only what is under way counts
    s.sending = 1
    assert s.holding() == 1


async def test_it_asks_again_soon_only_while_others_hold_more_than_their_fair_share() -> None:
    clock = FakeClock(start=T0)
    s = share(clock)
    s.granted(0, T0 + 30, fair=2, told=0)
    assert s.wants_more(held=5)
    s.granted(2, T0 + 30, fair=2, told=0)
    assert not s.wants_more(held=5)  # at its fair share: the regular claims renew it
    assert not s.wants_more(held=0)  # nothing to send
    assert s.renew_at() == T0 + 13


async def test_slots_the_store_counts_but_it_no_longer_holds_are_overstated() -> None:
    # The store keeps max(what the claim said it held, the new share). A replica whose
    # work ran out was told share 0 while it still said it held 3: until it says so
    # again, the others cannot have those slots.
    clock = FakeClock(start=T0)
    s = share(clock)
    assert not s.overstated()  # nothing recorded yet
    s.granted(3, T0 + 30, fair=3, told=0)
    assert (s.recorded, s.overstated()) == (3, False)  # it may start three sends
    s.granted(0, T0 + 30, fair=4, told=3)
    assert (s.recorded, s.overstated()) == (3, True)
    s.granted(0, T0 + 30, fair=4, told=s.holding())  # the next claim says 0
    assert (s.recorded, s.overstated()) == (0, False)
    # Shrunk while sends were under way: they keep their slots until they end.
    s.granted(1, T0 + 30, fair=1, told=0)
    s.sending = 1
    s.granted(1, T0 + 30, fair=1, told=3)
    assert s.overstated()
    s.granted(1, T0 + 30, fair=1, told=s.holding())
    assert not s.overstated()
    # A record lapses with the share: nothing is held in the store after it.
    s.granted(0, T0 + 30, fair=4, told=3)
    s.sending = 0
    assert s.overstated()
    clock.advance(30)
    assert not s.overstated()
