"""This replica's in-flight slots of one target: `max_in_flight` across replicas (SPEC §9).

On a shared store the cap is on sends, not on claimed rows: a replica claims ahead
(a local queue, as with one replica) and starts a send only within its *share*, which
the store hands out with each claim (`Store.claim_share`): fair among the replicas
holding work, never more than the others' sends and shares leave free. The store keeps
max(held, share) per replica, where a replica holds its sends under way or, while
its claim is in the air, its current share (sends may still start within it); so a
replica told to shrink keeps the slots of the sends it already started until they
end, and starts none while over its share.

A share lapses with the claim lease (`until`): a replica that cannot reach the store
(or was frozen) stops starting sends before the others may take its slots, as it does
with its claimed rows.

What the store keeps for this replica can be more than it now needs: max(what it
said it held, its new share), and the sends it held may end. A replica whose work runs
out would keep those slots from the others until its next claim, which an idle
replica makes only every few seconds; so while the record is `overstated` the feeder
asks again soon (with the next claim, which says what it holds now).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bridge.aio import first_of
from bridge.clock import Clock


class InFlightShare:
    """The share, and the sends under way against it; workers wait in `acquire`."""

    def __init__(self, cap: int, clock: Clock, *, margin_s: float, renew_s: float) -> None:
        self.share = 0
        self.fair = cap  # until the store says otherwise: alone, the whole cap
        self.until = 0.0
        self.sending = 0
        self.recorded = 0  # what the store keeps for this replica since the last claim
        self._clock = clock
        self._margin_s = margin_s  # no send starts this close to the share's end
        self._renew_s = renew_s  # ask again this long before the share ends
        self._changed = asyncio.Event()

    def granted(self, share: int, until: float, fair: int, *, told: int) -> None:
        """The store's answer to a claim in which this replica said it held `told`."""
        self.share, self.until, self.fair = share, until, fair
        self.recorded = max(told, share)  # as the store writes it
        self._changed.set()

    def overstated(self) -> bool:
        """Whether the store counts more slots for this replica than it holds now
        (until the record lapses with the share)."""
        return self.recorded > self.holding() and self._clock.now() < self.until

    def usable(self) -> bool:
        return self.sending < self.share and self._live()

    def _live(self) -> bool:
        return self._clock.now() < self.until - self._margin_s

    def holding(self) -> int:
        """What to tell the store we hold: the sends under way, or the current share if
        larger. Until the store's answer to this claim is applied, workers may still
        start sends up to the current share; the store must count those too, or
        another replica could be given slots we are about to use."""
        return max(self.sending, self.share if self._live() else 0)

    def wants_more(self, held: int) -> bool:
        """Whether asking again soon may give a share that would be used now (`held`:
        rows queued and under way): others still hold more than their fair share."""
        return self.share < min(self.fair, held)

    def renew_at(self) -> float:
        """When the share must be asked for again (while there is work)."""
        return self.until - self._renew_s

    async def acquire(self, stopping: asyncio.Event, blocked: Callable[[], bool]) -> bool:
        """Take a slot (True), or False once stopping or `blocked()` (paused, held).

        Whoever makes `blocked()` true calls `wake()`.
        """
        while not self.usable():
            if stopping.is_set() or blocked():
                return False
            self._changed.clear()
            await first_of(self._changed.wait(), stopping.wait())
        self.sending += 1
        return True

    def release(self) -> None:
        self.sending -= 1
        self._changed.set()

    def wake(self) -> None:
        """Let waiting workers look again (e.g. the target was paused)."""
        self._changed.set()
