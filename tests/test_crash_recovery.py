"""The bridge process is SIGKILLed at random points and restarted: nothing is lost and
no notification is created twice. Then SIGTERM under load: exit 0, nothing lost.

Real processes (`python -m bridge run`), the simulator and the receiver on loopback.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import yaml
from aiohttp.test_utils import TestServer
from conftest import wait_for
from webhook_receiver import SECRET, Receiver

from bridge.clock import SystemClock
from bridge.settings import StoreSettings
from bridge.simulator import Simulator, SimulatorConfig
from bridge.store import open_store

ServerFactory = Callable[..., Awaitable[TestServer]]
BACKLOG = 3000


def write_config(path: Path, sim_url: str, hook_url: str, db: Path) -> Path:
    cfg = {
        "upstream": {
            "base_url": sim_url,
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "page_size": 100,
            "max_requests_per_s": 1000,
        },
        "poll": {"events": {"interval_s": 1, "start_from": "25h", "max_window_s": 3600}},
        "store": {"url": f"sqlite:///{db}"},
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 10},
        "logging": {"format": "json", "level": "warning"},
        "targets": [
            {
                "name": "hook",
                "type": "webhook",
                "url": hook_url,
                "secret": SECRET,
                "retry": {"base_delay_s": 0.2, "max_delay_s": 1},
            }
        ],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


async def start_bridge(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()


async def stored_created(db: Path) -> tuple[int, dict[str, int]]:
    store = open_store(StoreSettings(url=f"sqlite:///{db}"), SystemClock())
    await store.open()
    try:
        return await store.count_notifications("event.created"), await store.queue_counts()
    finally:
        await store.close()  # type: ignore[func-returns-value]


async def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"crash test seed {seed}")
    sim = Simulator(SimulatorConfig(seed=seed, devices=50, rate=0.0, backlog=BACKLOG))
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
    expected = {e.item["ticket"] for e in sim.events}
    assert len(expected) == BACKLOG

    # Kill points: some while polling (by upstream requests seen), some while delivering.
    kill_points: list[tuple[str, int]] = [("requests", rng.randrange(3, 25))]
    kill_points += [("deliveries", n) for n in sorted(rng.sample(range(100, BACKLOG - 100), 3))]
    for kind, threshold in kill_points:
        proc = await start_bridge(config)
        baseline = len(sim.requests)

        def reached(kind: str = kind, threshold: int = threshold, base: int = baseline) -> bool:
            if kind == "requests":
                return len(sim.requests) - base >= threshold
            return len(rec.envelopes) >= threshold

        await wait_for(reached, timeout=60, message=f"kill point {kind}>={threshold}")
        await kill(proc)

    # Final run: everything must arrive; then a graceful stop.
    proc = await start_bridge(config)
    try:
        await wait_for(lambda: set(rec.tickets()) >= expected, timeout=90, message="all tickets")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        code = await asyncio.wait_for(proc.wait(), 30)
        err = (await proc.stderr.read()).decode()
    assert code == 0, err

    # At least once: every ticket reached the receiver.
    assert set(rec.tickets()) == expected
    # Never created twice: each ticket has exactly one notification id, even if resent.
    ids: dict[str, set[str]] = defaultdict(set)
    for env in rec.of_type("event.created"):
        ids[env["data"]["ticket"]].add(env["id"])
    assert all(len(v) == 1 for v in ids.values()), "a ticket got two event.created ids"
    created, counts = await stored_created(db)
    assert created == BACKLOG
    assert counts.get("hook", {}).get("pending", 0) == 0
    assert counts.get("hook", {}).get("in_flight", 0) == 0


async def test_sigterm_during_backlog_exits_0_and_restart_finishes(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    sim = Simulator(SimulatorConfig(seed=11, devices=50, rate=0.0, backlog=2000))
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
    proc = await start_bridge(config)
    await wait_for(lambda: len(rec.envelopes) >= 300, timeout=60, message="deliveries under way")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 15) == 0
    stopped_at = len(rec.envelopes)
    proc = await start_bridge(config)
    try:
        expected = {e.item["ticket"] for e in sim.events}
        await wait_for(lambda: set(rec.tickets()) >= expected, timeout=60, message="rest")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    # A graceful stop leaves nothing in flight, so nothing is sent twice.
    assert stopped_at >= 300
    assert rec.tickets() == {t: 1 for t in expected}
    created, _ = await stored_created(db)
    assert created == 2000
