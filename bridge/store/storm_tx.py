"""The storm-control transaction (SPEC §6.5): what `Store.storm` hands to its callback.

One class for both stores: each passes its SQL (same statements, same argument
order, its own placeholders) and two small adapters to run it. The transaction
is opened by the store and, on PostgreSQL, serialized per target across replicas
(an advisory lock), so a group is decided and flushed by one writer at a time: a
group message is stored once, together with its members' state change.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.notifications import Notification, notification_from_envelope
from bridge.store.base import DeliveryState, NewNotification

Fetch = Callable[..., Awaitable[Sequence[Sequence[Any]]]]
Execute = Callable[..., Awaitable[Any]]
AddNotifications = Callable[[Sequence[NewNotification]], Awaitable[object]]


@dataclass(frozen=True)
class StormQueries:
    """The dialect's statements; arguments are listed with each."""

    unchecked: str  # ids -> id
    mark_checked: str  # now, ids
    park: str  # state, key, now, id, claim
    resuppress: str  # now, id
    get_group: str  # target, key -> last_sent_at, flush_at
    put_group: str  # target, key, last_sent_at, flush_at, now
    due_groups: str  # target, now -> key
    next_flush: str  # target -> min(flush_at)
    parked: str  # target, state -> id, body, group_key
    parked_key: str  # target, state, key -> id, body, group_key
    carry: str  # carrier, now, ids
    release: str  # now, id
    neighbours: str  # since, until, target -> body
    ids: Callable[[Sequence[int]], Any]  # how a list of ids is passed


@dataclass(frozen=True)
class Parked:
    """A delivery waiting as `grouped` or `held`."""

    delivery_id: int
    notification: Notification
    group_key: str


class StormTx:
    """Storm-control operations for one target inside one open transaction."""

    NEIGHBOURS_MAX = 1000  # inhibition looks at this many nearby notifications at most

    def __init__(
        self,
        target: str,
        queries: StormQueries,
        fetch: Fetch,
        execute: Execute,
        add_notifications: AddNotifications,
    ) -> None:
        self.target = target
        self._q = queries
        self._fetch = fetch
        self._execute = execute
        self._add = add_notifications
        self.woken = False  # a delivery became pending: wake the target after commit

    async def unchecked(self, ids: Sequence[int]) -> set[int]:
        """Which of these deliveries the gate has not decided yet."""
        if not ids:
            return set()
        return {int(row[0]) for row in await self._fetch(self._q.unchecked, self._q.ids(ids))}

    async def mark_checked(self, ids: Sequence[int], now: float) -> None:
        """These deliveries go out as themselves; a retry of them is not gated again."""
        if ids:
            await self._execute(self._q.mark_checked, now, self._q.ids(ids))

    async def park(
        self, delivery_id: int, claim: str | None, state: DeliveryState, key: str, now: float
    ) -> bool:
        """Move a claimed delivery to `grouped`/`suppressed`/`held`; False if the claim is lost."""
        rows = await self._fetch(self._q.park, state.value, key, now, delivery_id, claim)
        return bool(rows)

    async def resuppress(self, delivery_id: int, now: float) -> None:
        """A waiting group member is suppressed after all (an inhibitor arrived meanwhile)."""
        await self._execute(self._q.resuppress, now, delivery_id)

    async def get_group(self, key: str) -> tuple[float | None, float | None] | None:
        rows = await self._fetch(self._q.get_group, self.target, key)
        return (rows[0][0], rows[0][1]) if rows else None

    async def put_group(
        self, key: str, last_sent_at: float | None, flush_at: float | None, now: float
    ) -> None:
        await self._execute(self._q.put_group, self.target, key, last_sent_at, flush_at, now)

    async def due_groups(self, now: float) -> list[str]:
        return [str(row[0]) for row in await self._fetch(self._q.due_groups, self.target, now)]

    async def next_flush_at(self) -> float | None:
        rows = await self._fetch(self._q.next_flush, self.target)
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def parked(self, state: DeliveryState, key: str | None = None) -> list[Parked]:
        """Waiting rows in `state` (of one group key, or all), oldest first."""
        if key is None:
            rows = await self._fetch(self._q.parked, self.target, state.value)
        else:
            rows = await self._fetch(self._q.parked_key, self.target, state.value, key)
        return [
            Parked(int(r[0]), notification_from_envelope(json.loads(r[1])), str(r[2] or ""))
            for r in rows
        ]

    async def carry(self, group: Notification, member_ids: Sequence[int], now: float) -> None:
        """Store `group` with a pending delivery to this target; its members are carried."""
        await self._add([NewNotification(group, [self.target])])
        await self._execute(self._q.carry, group.id, now, self._q.ids(member_ids))
        self.woken = True

    async def release(self, delivery_id: int, now: float) -> None:
        """A lone waiting member goes out as itself."""
        await self._execute(self._q.release, now, delivery_id)
        self.woken = True

    async def neighbours(self, since: float, until: float) -> list[Notification]:
        """Notifications routed to this target whose occurred_at lies in [since, until]."""
        rows = await self._fetch(self._q.neighbours, since, until, self.target)
        return [notification_from_envelope(json.loads(r[0])) for r in rows]
