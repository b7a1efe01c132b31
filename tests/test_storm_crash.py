"""Storm control survives SIGKILL (SPEC §6.5): with groups open, bridges are killed at
random points and restarted; no member is lost and no group is sent twice.

Real processes (`python -m bridge run`), the simulator and the receiver on loopback;
SQLite with one process, PostgreSQL with two replicas. A member counts as sent when
its notification id reached the receiver as itself or inside one `event.group`;
"twice" means one member inside two different groups (or alone and in a group).
A group re-sent after a crash keeps its id: receivers de-duplicate it by `webhook-id`.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from aiohttp.test_utils import TestServer
from conftest import wait_for
from test_crash_recovery import kill, start_bridge, write_config
from test_replicas_pg import Cluster, cluster_factory, pg_url, store  # noqa: F401
from webhook_receiver import Receiver

from bridge.simulator import Simulator, SimulatorConfig
from bridge.store.base import Store

ServerFactory = Callable[..., Awaitable[TestServer]]
BACKLOG = 1200
GROUP = {"by": ["vehicle.id"], "interval_s": 1, "max_items": 1000}
OPEN_GROUPS = "SELECT count(*) FROM deliveries WHERE state = 'grouped' AND carrier IS NULL"
UNFINISHED = "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'in_flight')"


def sent_members(rec: Receiver) -> tuple[dict[str, str], dict[str, set[str]]]:
    """{member notification id: ticket}, {member notification id: ids that carried it}."""
    ticket_of: dict[str, str] = {}
    carried_by: dict[str, set[str]] = defaultdict(set)
    for env in rec.envelopes:
        if env["type"] == "event.created":
            ticket_of[env["id"]] = env["data"]["ticket"]
            carried_by[env["id"]].add(env["id"])
        elif env["type"] == "event.group":
            assert env["data"]["truncated"] == 0
            assert env["data"]["count"] == len(env["data"]["items"]) >= 2
            for item in env["data"]["items"]:
                ticket_of[item["notification_id"]] = item["data"]["ticket"]
                carried_by[item["notification_id"]].add(env["id"])
    return ticket_of, carried_by


def covered(rec: Receiver, expected: set[str]) -> bool:
    return set(sent_members(rec)[0].values()) >= expected


def assert_nothing_lost_nothing_twice(rec: Receiver, expected: set[str]) -> None:
    ticket_of, carried_by = sent_members(rec)
    lost = expected - set(ticket_of.values())
    twice = [n for n, carriers in carried_by.items() if len(carriers) > 1]
    ids_per_ticket: dict[str, set[str]] = defaultdict(set)
    for nid, ticket in ticket_of.items():
        ids_per_ticket[ticket].add(nid)
    two_ids = [t for t, ids in ids_per_ticket.items() if len(ids) > 1]
    assert (len(lost), len(twice), len(two_ids)) == (0, 0, 0), (
        f"lost {len(lost)}, carried twice {len(twice)}, tickets with two ids {len(two_ids)}"
    )
    assert rec.of_type("event.group"), "no group was sent: the test proved nothing"


def sqlite_count(db: Path, query: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(query).fetchone()[0])


async def test_sqlite_sigkill_with_open_groups_loses_no_member_and_sends_no_group_twice(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"storm crash test seed {seed}")
    sim = Simulator(SimulatorConfig(seed=seed, devices=30, rate=0.0, backlog=BACKLOG))
    sim_server = await aiohttp_server(sim.app())
    rec = Receiver()
    rec_server = await aiohttp_server(rec.app())
    db = tmp_path / "bridge.db"
    config = write_config(
        tmp_path / "config.yaml",
        str(sim_server.make_url("")),
        str(rec_server.make_url("/hook")),
        db,
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["targets"][0]["group"] = GROUP
    config.write_text(yaml.safe_dump(cfg))
    expected = {e.item["ticket"] for e in sim.events}

    open_at_kill: list[int] = []
    # The first kill while polling, the others while groups are being collected and sent.
    kill_points = [("requests", rng.randrange(3, 12))]
    kill_points += [("envelopes", rng.randrange(1, 12)) for _ in range(3)]
    for kind, threshold in kill_points:
        proc = await start_bridge(config)
        base = len(sim.requests) if kind == "requests" else len(rec.envelopes)

        def reached(kind: str = kind, threshold: int = threshold, base: int = base) -> bool:
            seen = len(sim.requests) if kind == "requests" else len(rec.envelopes)
            return seen - base >= threshold or covered(rec, expected)

        await wait_for(reached, timeout=60, message=f"kill point {kind}+{threshold}")
        await kill(proc)
        if db.exists():
            open_at_kill.append(sqlite_count(db, OPEN_GROUPS))

    proc = await start_bridge(config)
    try:
        await wait_for(lambda: covered(rec, expected), timeout=90, message="every member sent")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
    assert code == 0
    assert any(n > 0 for n in open_at_kill), f"no kill hit an open group: {open_at_kill}"
    assert_nothing_lost_nothing_twice(rec, expected)
    assert sqlite_count(db, OPEN_GROUPS) == 0
    assert sqlite_count(db, UNFINISHED) == 0


async def pg_count(url: str, query: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def test_postgresql_two_replicas_sigkill_with_open_groups_one_group_never_two(
    cluster_factory: Callable[..., Awaitable[tuple[Cluster, Simulator]]],  # noqa: F811
    pg_url: str,  # noqa: F811
    store: Store,  # noqa: F811
) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"storm replica crash test seed {seed}")
    rec = Receiver()
    target: dict[str, Any] = {"group": GROUP}
    cluster, sim = await cluster_factory(rec.app(), backlog=BACKLOG, target=target)
    expected = {e.item["ticket"] for e in sim.events}
    await cluster.start(2)

    open_at_kill: list[int] = []
    for _ in range(3):
        base = len(rec.envelopes)
        threshold = rng.randrange(1, 12)
        await wait_for(
            lambda b=base, t=threshold: len(rec.envelopes) - b >= t or covered(rec, expected),
            timeout=60,
            message="a kill point",
        )
        victim = rng.choice([r for r in cluster.replicas if r.alive])
        await kill(victim.proc)
        open_at_kill.append(await pg_count(pg_url, OPEN_GROUPS))
        await cluster.start(1)

    await wait_for(lambda: covered(rec, expected), timeout=120, message="every member sent")
    assert any(n > 0 for n in open_at_kill), f"no kill hit an open group: {open_at_kill}"
    assert_nothing_lost_nothing_twice(rec, expected)

    async def settled() -> bool:
        return (await pg_count(pg_url, OPEN_GROUPS), await pg_count(pg_url, UNFINISHED)) == (0, 0)

    await wait_for(settled, timeout=30, message="no open group, nothing unfinished")
