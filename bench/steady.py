"""Steady state and idle: what the bridge costs when nothing (or nothing new) happens.

steady: N events (24 h of them) all inside the re-scan window (`lookback_s` 25 h),
polled every `--interval` seconds. After the backlog is delivered and one more poll
has checked every item against the store, the CPU of the following polls divided by
the items they fetched is the cost of a re-seen, unchanged item (fetch and parse
included: that is what the poll does with it).

idle: no events at all, the default `interval_s: 30`; the CPU the bridge uses over
`--idle-s` seconds, as a percentage of one core.

    python bench/steady.py [--events 10000] [--polls 4] [--idle-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    cpu_seconds,
    free_port,
    metric_total,
    receiver_count,
    start_bridge,
    start_receiver,
    start_simulator,
    stop,
    wait_http,
    write_bridge_config,
)

POLL_RUNS = 'bridge_poll_runs_total{job="events",outcome="success"}'
FETCHED = 'bridge_items_fetched_total{job="events"}'


async def wait_polls(
    session: aiohttp.ClientSession, base: str, runs: float, *, first_look_s: float = 0.0
) -> None:
    """Until the events poll has completed `runs` times.

    A /metrics scrape costs the bridge CPU that would be counted with the polls being
    measured: the first look is after `first_look_s`, then one every 2.5 s.
    """
    await asyncio.sleep(first_look_s)
    while await metric_total(session, base, POLL_RUNS) < runs:
        await asyncio.sleep(2.5)


async def steady(args: argparse.Namespace) -> dict[str, Any]:
    sim_port, rec_port, port = free_port(), free_port(), free_port()
    sim, rec = start_simulator(sim_port, args.events), start_receiver(rec_port)
    sim_url, rec_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{rec_port}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-steady-"))
    events = {
        "interval_s": args.interval,
        "start_from": "25h",
        "lookback_s": 25 * 3600,
        # Every run re-scans the whole window (the default re-scans it every 60 s).
        "rescan_interval_s": args.interval,
        "rescan_budget": 1.0,
        "max_window_s": 3600,
    }
    config = write_bridge_config(
        tmp, sim_url, f"{rec_url}/hook", port=port, events=events, page_size=args.page_size
    )
    bridge = None
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{sim_url}/V2/events")
        await wait_http(f"{rec_url}/count")
        bridge = start_bridge(config)
        await wait_http(f"{base}/healthz")
        async with aiohttp.ClientSession() as session:
            while await receiver_count(session, rec_url) < args.events:
                await asyncio.sleep(0.2)
            # The poll that delivered the backlog, then one that checks every item
            # against the store (and remembers it unchanged).
            runs = await metric_total(session, base, POLL_RUNS)
            await wait_polls(session, base, runs + 2)
            cpu0, fetched0 = cpu_seconds(bridge.pid), await metric_total(session, base, FETCHED)
            runs0, wall0 = await metric_total(session, base, POLL_RUNS), time.perf_counter()
            await wait_polls(
                session, base, runs0 + args.polls, first_look_s=(args.polls - 0.5) * args.interval
            )
            cpu1, fetched1 = cpu_seconds(bridge.pid), await metric_total(session, base, FETCHED)
            wall = time.perf_counter() - wall0
            delivered = await receiver_count(session, rec_url)
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(30)
        stop(sim, rec)
    items = fetched1 - fetched0
    return {
        "events_in_window": args.events,
        "interval_s": args.interval,
        "page_size": args.page_size,
        "polls_measured": args.polls,
        "items_re_seen": int(items),
        "cpu_us_per_re_seen_item": round((cpu1 - cpu0) / items * 1e6, 2),
        "_cpu_s": cpu1 - cpu0,
        "_wall_s": wall,
        "cpu_percent_of_one_core": round((cpu1 - cpu0) / wall * 100, 2),
        "deliveries_after_backlog": delivered - args.events,
    }


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    sim_port, rec_port, port = free_port(), free_port(), free_port()
    sim, rec = start_simulator(sim_port, 0), start_receiver(rec_port)
    sim_url, rec_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{rec_port}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    config = write_bridge_config(
        tmp, sim_url, f"{rec_url}/hook", port=port, events={"interval_s": 30}
    )
    bridge = None
    try:
        await wait_http(f"{sim_url}/V2/events")
        bridge = start_bridge(config)
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        await asyncio.sleep(5)  # start-up done, first poll run
        cpu0, wall0 = cpu_seconds(bridge.pid), time.perf_counter()
        await asyncio.sleep(args.idle_s)
        cpu1, wall = cpu_seconds(bridge.pid), time.perf_counter() - wall0
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(30)
        stop(sim, rec)
    return {
        "idle_s": round(wall, 1),
        "idle_cpu_s": round(cpu1 - cpu0, 3),
        "idle_cpu_percent_of_one_core": round((cpu1 - cpu0) / wall * 100, 3),
    }


async def main(args: argparse.Namespace) -> None:
    result: dict[str, Any] = {}
    if args.events > 0:
        result["steady"] = await steady(args)
    if args.idle_s > 0:
        result["idle"] = await idle(args)
    if "steady" in result:
        steady_run = result["steady"]
        cpu, wall = steady_run.pop("_cpu_s"), steady_run.pop("_wall_s")
        if "idle" in result:
            # What the polls cost beyond what the bridge spends anyway in that time (its
            # lease, the other pollers, the scrapes): the idle run's rate times the wall.
            idle_rate = result["idle"]["idle_cpu_s"] / result["idle"]["idle_s"]
            above = max(0.0, cpu - idle_rate * wall) / steady_run["items_re_seen"]
            steady_run["cpu_us_per_re_seen_item_above_idle"] = round(above * 1e6, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000, help="0: skip the steady run")
    p.add_argument("--interval", type=float, default=10.0, help="poll interval (steady)")
    p.add_argument("--page-size", type=int, default=100, help="upstream.page_size (steady)")
    p.add_argument("--polls", type=int, default=4, help="polls measured (steady)")
    p.add_argument("--idle-s", type=float, default=60.0, help="0: skip the idle run")
    asyncio.run(main(p.parse_args()))
