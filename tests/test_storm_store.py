"""`Store.storm` and its transaction (SPEC §6.5) on SQLite AND PostgreSQL, plus the
SQLite table rebuild that made room for the new delivery states."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import pytest
from test_store_contract import T0, add, make_store, note  # noqa: F401

from bridge.clock import FakeClock
from bridge.notifications import build_notification
from bridge.store.base import DeliveryState, Store
from bridge.store.migrate import load_migrations, migrate
from bridge.store.sqlite import SqliteStore, _SqliteMigrations
from bridge.store.storm_tx import StormTx

StoreFactory = Callable[[], Awaitable[Store]]


def group_of(now: float) -> object:
    return build_notification(
        "event.group", {"reason": "grouped", "count": 2}, base_url="https://x", now=now
    )


async def claimed_ids(store: Store, n: int) -> list[tuple[int, str]]:
    rows = await store.claim("hook", T0, n, fifo=False)
    return [(d.id, d.claim) for d in rows]


async def test_parked_rows_wait_and_one_group_carries_them(
    make_store: StoreFactory,  # noqa: F811
) -> None:
    store = await make_store()
    notes = [note(T0 + i, ticket=f"t{i}") for i in range(3)]
    await add(store, notes, ["hook"])
    claims = await claimed_ids(store, 3)

    async def park(tx: StormTx) -> list[bool]:
        assert await tx.unchecked([i for i, _ in claims]) == {i for i, _ in claims}
        out = [await tx.park(i, c, DeliveryState.GROUPED, '{"k":1}', T0) for i, c in claims[:2]]
        out.append(await tx.park(claims[2][0], "someone-else", DeliveryState.GROUPED, "", T0))
        await tx.put_group('{"k":1}', T0, T0 + 300, T0)
        return out

    assert await store.storm("hook", park) == [True, True, False]  # a foreign claim: no
    listed, _ = await store.list_deliveries(state=DeliveryState.GROUPED)
    assert sorted(r.id for r in listed) == sorted(i for i, _ in claims[:2])

    async def flush(tx: StormTx) -> str:
        assert await tx.due_groups(T0 + 299) == []
        assert await tx.due_groups(T0 + 300) == ['{"k":1}']
        members = await tx.parked(DeliveryState.GROUPED, '{"k":1}')
        assert [m.notification.id for m in members] == [n.id for n in notes[:2]]
        group = group_of(T0 + 300)
        await tx.carry(group, [m.delivery_id for m in members], T0 + 300)  # type: ignore[arg-type]
        await tx.put_group('{"k":1}', T0 + 300, None, T0 + 300)
        assert await tx.parked(DeliveryState.GROUPED) == []
        return group.id  # type: ignore[attr-defined,no-any-return]

    group_id = await store.storm("hook", flush)
    claimed = await store.claim("hook", T0 + 300, 10, fifo=False)
    # The group is pending; the row whose park was refused is claimable once its claim
    # expires (it was never parked, so it is sent as itself).
    assert [d.notification_id for d in claimed] == [notes[2].id, group_id]
    # Carried members stay `grouped` (listable), but no longer wait.
    listed, _ = await store.list_deliveries(state=DeliveryState.GROUPED)
    assert len(listed) == 2


async def test_a_failed_storm_transaction_leaves_nothing_behind(
    make_store: StoreFactory,  # noqa: F811
) -> None:
    store = await make_store()
    await add(store, [note(T0, ticket="a"), note(T0 + 1, ticket="b")], ["hook"])
    claims = await claimed_ids(store, 2)

    async def park(tx: StormTx) -> None:
        for i, c in claims:
            await tx.park(i, c, DeliveryState.GROUPED, "", T0)

    await store.storm("hook", park)

    async def crash(tx: StormTx) -> None:
        members = await tx.parked(DeliveryState.GROUPED)
        await tx.carry(group_of(T0 + 5), [m.delivery_id for m in members], T0 + 5)  # type: ignore[arg-type]
        raise RuntimeError("killed between the group and the commit")

    with pytest.raises(RuntimeError):
        await store.storm("hook", crash)
    assert await store.count_notifications("event.group") == 0

    async def waiting(tx: StormTx) -> int:
        return len(await tx.parked(DeliveryState.GROUPED))

    assert await store.storm("hook", waiting) == 2


async def test_concurrent_flushes_store_one_group(
    make_store: StoreFactory,  # noqa: F811
) -> None:
    """Two writers (replicas on PostgreSQL) flushing the same members: one group."""
    first, second = await make_store(), await make_store()
    await add(first, [note(T0 + i, ticket=f"c{i}") for i in range(4)], ["hook"])
    claims = await claimed_ids(first, 4)

    async def park(tx: StormTx) -> None:
        for i, c in claims:
            await tx.park(i, c, DeliveryState.HELD, "", T0)

    await first.storm("hook", park)

    async def flush(tx: StormTx) -> int:
        members = await tx.parked(DeliveryState.HELD)
        await asyncio.sleep(0.05)  # widen the race window between reading and writing
        if members:
            await tx.carry(group_of(T0 + 9), [m.delivery_id for m in members], T0 + 9)  # type: ignore[arg-type]
        return len(members)

    counts = await asyncio.gather(first.storm("hook", flush), second.storm("hook", flush))
    assert sorted(counts) == [0, 4]
    assert await first.count_notifications("event.group") == 1


async def test_suppressed_can_be_retried_and_passes_the_gate_afterwards(
    make_store: StoreFactory,  # noqa: F811
) -> None:
    store = await make_store()
    await add(store, [note(T0, ticket="s")], ["hook"])
    [(delivery_id, claim)] = await claimed_ids(store, 1)

    async def suppress(tx: StormTx) -> bool:
        return await tx.park(delivery_id, claim, DeliveryState.SUPPRESSED, "", T0)

    assert await store.storm("hook", suppress)
    assert await store.retry_delivery(delivery_id, T0 + 1)
    [again] = await store.claim("hook", T0 + 1, 5, fifo=False)

    async def unchecked(tx: StormTx) -> set[int]:
        return await tx.unchecked([again.id])

    assert await store.storm("hook", unchecked) == set()


async def test_prune_keeps_what_still_waits(make_store: StoreFactory) -> None:  # noqa: F811
    store = await make_store()
    await add(store, [note(T0, ticket="w"), note(T0, ticket="d")], ["hook"])
    claims = await claimed_ids(store, 2)

    async def hold(tx: StormTx) -> None:
        await tx.park(claims[0][0], claims[0][1], DeliveryState.HELD, "", T0)
        await tx.park(claims[1][0], claims[1][1], DeliveryState.SUPPRESSED, "", T0)

    await store.storm("hook", hold)
    await store.prune(T0 + 10_000)
    assert await store.count_notifications() == 1  # the held one waits; suppressed is done


async def test_sqlite_rebuild_keeps_rows_ids_and_the_id_high_water_mark(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    db_path = tmp_path / "old.db"
    migrations = load_migrations("sqlite")
    storm_version = next(m.version for m in migrations if m.name == "storm_control")
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        await migrate(_SqliteMigrations(db, fake_clock), migrations[: storm_version - 1])
    old = SqliteStore(db_path, fake_clock)
    # Open the old schema through raw SQL: a notification, a dead and a pruned delivery.
    with sqlite3.connect(db_path) as conn:
        n = note(T0, ticket="old")
        conn.execute(
            "INSERT INTO notifications (id, type, created_at, event_at, body) VALUES (?,?,?,?,?)",
            (n.id, n.type, n.created_at, None, n.body),
        )
        for state in ("dead", "delivered", "delivered"):
            conn.execute(
                "INSERT INTO deliveries (notification_id, target, state, attempts, created_at,"
                " updated_at) VALUES (?, 'hook', ?, 3, ?, ?)",
                (n.id, state, T0, T0),
            )
        conn.execute("DELETE FROM deliveries WHERE id = 3")
    await old.open()
    try:
        rows, _ = await old.list_deliveries(limit=10)
        assert [(r.id, r.state, r.attempts) for r in rows] == [
            (2, DeliveryState.DELIVERED, 3),
            (1, DeliveryState.DEAD, 3),
        ]
        await add(old, [note(T0 + 1, ticket="new")], ["hook"])
        rows, _ = await old.list_deliveries(limit=1)
        assert rows[0].id == 4  # AUTOINCREMENT did not reuse the pruned id 3
    finally:
        await old.close()
