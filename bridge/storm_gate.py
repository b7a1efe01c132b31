"""The storm-control gate of one target's dispatcher (SPEC §6.5).

Between claiming deliveries and sending them, the gate parks those that storm
control keeps back — `suppressed` (inhibited), `held` (quiet hours) or `grouped`
— and now and then flushes what waits: a due group goes out as one `event.group`
(or its lone member as itself), held deliveries go out as `event.group` with
`reason: muted` once every quiet hour has ended. Each step is one `Store.storm`
transaction, so a group notification and its members' state change are stored
together, and the decisions themselves are the pure functions of `storm.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from bridge import storm
from bridge.clock import Clock
from bridge.metrics import Metrics
from bridge.notifications import Notification, build_notification, notification_from_envelope
from bridge.settings import GroupSettings, InhibitRule, MuteWindow
from bridge.store.base import Delivery, DeliveryState, Store
from bridge.store.storm_tx import Parked, StormTx

log = structlog.get_logger(__name__)
DEFAULT_MAX_ITEMS = 20  # members listed in a group when the target has no `group`


@dataclass(frozen=True)
class StormSettings:
    """A target's storm control; `None` in DispatchOptions when it has none."""

    group: GroupSettings | None = None
    inhibit: tuple[InhibitRule, ...] = ()
    mute: tuple[MuteWindow, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.group is not None or bool(self.inhibit) or bool(self.mute)


class StormGate:
    """Parks and flushes one target's deliveries under its storm-control settings."""

    # Look at the stored groups and held rows at least this often (a group another
    # replica opened and then died with, the end of a quiet hour).
    RECHECK_S = 5.0

    def __init__(
        self, target: str, settings: StormSettings, store: Store, clock: Clock, metrics: Metrics
    ) -> None:
        self._target = target
        self._cfg = settings
        self._store = store
        self._clock = clock
        self._next_flush = -math.inf  # flush once at start: groups may be due already
        self._m = {
            state: metrics.deliveries.labels(target=target, outcome=state.value)
            for state in (DeliveryState.GROUPED, DeliveryState.SUPPRESSED, DeliveryState.HELD)
        }

    def gated(self, delivery: Delivery) -> bool:
        """True when storm control may keep this delivery back."""
        cfg = self._cfg
        if delivery.type == storm.GROUP_TYPE:
            return False
        return (
            bool(cfg.inhibit)
            or (cfg.group is not None and delivery.type in cfg.group.types)
            or any(delivery.type in w.types for w in cfg.mute)
        )

    # -- admission ------------------------------------------------------------------

    async def admit(self, claimed: Sequence[Delivery]) -> list[Delivery]:
        """The claimed deliveries to send now; the others are parked (or lost their claim)."""
        candidates = [d for d in claimed if self.gated(d)]
        if not candidates:
            return list(claimed)
        now = self._clock.now()

        async def run(tx: StormTx) -> dict[int, DeliveryState | None]:
            return await self._admit(tx, candidates, now)

        parked = await self._store.storm(self._target, run)
        for state in parked.values():
            if state is not None:
                self._m[state].inc()
        return [d for d in claimed if d.id not in parked]

    async def _admit(
        self, tx: StormTx, candidates: Sequence[Delivery], now: float
    ) -> dict[int, DeliveryState | None]:
        fresh = await tx.unchecked([d.id for d in candidates])
        parked: dict[int, DeliveryState | None] = {}
        passed: list[int] = []
        for delivery in candidates:
            if delivery.id not in fresh:
                continue  # decided before (a retry, a replay): it goes as itself
            n = notification_from_envelope(json.loads(delivery.body))
            state, key = await self._decide(tx, n, now)
            if state is None:
                passed.append(delivery.id)
            elif await tx.park(delivery.id, delivery.claim or None, state, key, now):
                parked[delivery.id] = state
            else:
                parked[delivery.id] = None  # the claim expired: not ours to send
        await tx.mark_checked(passed, now)
        return parked

    async def _decide(
        self, tx: StormTx, n: Notification, now: float
    ) -> tuple[DeliveryState | None, str]:
        cfg = self._cfg
        if cfg.inhibit and await self._inhibited(tx, n):
            return DeliveryState.SUPPRESSED, ""
        key = storm.encode_key(storm.key_of(cfg.group.by, n.data)) if cfg.group else ""
        if storm.muted(cfg.mute, n.type, now):
            return DeliveryState.HELD, key
        if cfg.group is not None and n.type in cfg.group.types:
            row = await tx.get_group(key)
            admission = storm.admit(storm.GroupState(*row) if row else None, now, cfg.group)
            state = admission.state
            await tx.put_group(key, state.last_sent_at, state.flush_at, now)
            if not admission.send:
                assert state.flush_at is not None
                self._next_flush = min(self._next_flush, state.flush_at)
                return DeliveryState.GROUPED, key
        return None, ""

    async def _inhibited(self, tx: StormTx, n: Notification) -> bool:
        window = storm.inhibit_window(self._cfg.inhibit, n)
        if window is None:
            return False
        return storm.inhibited(self._cfg.inhibit, n, await tx.neighbours(*window))

    # -- flushing -------------------------------------------------------------------

    async def flush_if_due(self) -> float:
        """Send what is due; returns when to look again (clock time)."""
        now = self._clock.now()
        if now < self._next_flush:
            return self._next_flush

        async def run(tx: StormTx) -> tuple[float | None, int]:
            return await self._flush(tx, now)

        next_at, suppressed = await self._store.storm(self._target, run)
        if suppressed:
            self._m[DeliveryState.SUPPRESSED].inc(suppressed)
        if not self._cfg.enabled:
            # Storm control was removed from this target: what still waited went out
            # with this flush at start-up, and nothing new is parked.
            self._next_flush = math.inf
        else:
            recheck = now + self.RECHECK_S
            self._next_flush = min(next_at if next_at is not None else math.inf, recheck)
        return self._next_flush

    async def _flush(self, tx: StormTx, now: float) -> tuple[float | None, int]:
        group = self._cfg.group
        max_items = group.max_items if group is not None else DEFAULT_MAX_ITEMS
        suppressed = 0
        # Due groups go out even if `group` was removed from the config since.
        for key in await tx.due_groups(now if group is not None else math.inf):
            members: list[Parked] = []
            for member in await tx.parked(DeliveryState.GROUPED, key):
                if self._cfg.inhibit and await self._inhibited(tx, member.notification):
                    await tx.resuppress(member.delivery_id, now)
                    suppressed += 1
                else:
                    members.append(member)
            row = await tx.get_group(key)
            last_sent = row[0] if row else None
            if len(members) == 1:
                await tx.release(members[0].delivery_id, now)  # alone, as itself
                last_sent = now
            elif members:
                await self._carry(tx, "grouped", key, members, max_items, now)
                last_sent = now
            await tx.put_group(key, last_sent, None, now)
        if not storm.any_muted(self._cfg.mute, now):  # also when `mute` was removed
            held = await tx.parked(DeliveryState.HELD)
            for key, members in storm.split_by_key(held).items():
                await self._carry(tx, "muted", key, members, max_items, now)
        return await tx.next_flush_at(), suppressed

    async def _carry(
        self,
        tx: StormTx,
        reason: str,
        key: str,
        members: Sequence[Parked],
        max_items: int,
        now: float,
    ) -> None:
        notes = [m.notification for m in members]
        data = storm.group_data(reason, storm.decode_key(key), notes, max_items)
        group = build_notification(
            storm.GROUP_TYPE, data, base_url=notes[0].source_base_url, now=now
        )
        await tx.carry(group, [m.delivery_id for m in members], now)
        log.info(
            "storm group stored",
            target=self._target,
            reason=reason,
            count=len(members),
            notification_id=group.id,
        )
