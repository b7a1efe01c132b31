"""Backlog benchmark: the bridge from a cold start drains N simulated events to a webhook.

Prints wall time to the last delivery, notifications/s, upstream requests (list pages;
GetVideoDetail calls for the recent events' video links apart), the bridge's peak RSS
and CPU (start-up apart), the store's size, and — in the same run, against the same
receiver — the ceiling of a plain aiohttp client posting N signed bodies of the
bridge's own shape with the same concurrency (on the stock asyncio loop and on
uvloop), and the ratios.

    python bench/backlog.py [--events 50000] [--devices 500] [--concurrency 8]
    python bench/backlog.py --store postgresql://postgres@127.0.0.1:5432/postgres [--replicas 3]

With `--store postgresql://…` the run uses a throwaway database created on that
server (dropped afterwards); `--replicas N` starts N bridge processes on it (peak RSS
is the largest replica's, CPU the sum). BENCH_BRIDGE_LOOP=asyncio runs the bridge
as if uvloop were not installed; BENCH_PROFILE=out.txt under py-spy
(BENCH_PROFILE_RATE samples a second, default 200).

Everything runs on loopback: the simulator, the receiver and the bridge are separate
processes; this script only orchestrates and runs the plain client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from common import (
    cpu_seconds,
    free_port,
    metric_total,
    new_loop,
    peak_rss_mb,
    post_signed,
    receiver_count,
    start_bridge,
    start_receiver,
    start_simulator,
    stop,
    wait_http,
    write_bridge_config,
)

from bridge.dedup import event_data_with_revision
from bridge.event_types import EventTypeTable
from bridge.normalize import normalize_event
from bridge.notifications import build_notification


async def throwaway_database(server_url: str) -> str:
    """A fresh database on the server of `server_url` (whose database is the admin one)."""
    parts = urlsplit(server_url)
    name = f"fb_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(parts._replace(path=f"/{name}"))


async def backends_cpu_seconds(url: str) -> float:
    """CPU time of the server processes connected to the database of `url` (this machine)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return sum(cpu_seconds(int(row[0])) for row in rows)


async def drop_database(server_url: str, url: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')
    finally:
        await conn.close()


async def run_bridge(
    args: argparse.Namespace, sim_url: str, hook: str, rec: str
) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-backlog-"))
    store_url = None
    if args.store:
        store_url = await throwaway_database(args.store)
    try:
        return await _run_bridge(args, sim_url, hook, rec, tmp, store_url)
    finally:
        if args.store and store_url:
            await drop_database(args.store, store_url)


async def _run_bridge(
    args: argparse.Namespace, sim_url: str, hook: str, rec: str, tmp: Path, store_url: str | None
) -> dict[str, float]:
    ports = [free_port() for _ in range(args.replicas)]
    configs = [
        write_bridge_config(
            tmp,
            sim_url,
            hook,
            port=port,
            events={"interval_s": 30, "start_from": "25h", "max_window_s": 3600},
            page_size=args.page_size,
            max_rps=args.max_rps,
            concurrency=args.concurrency,
            store_url=store_url,
        )
        for port in ports
    ]
    async with aiohttp.ClientSession() as session:
        await session.post(f"{rec}/reset")
        started = time.perf_counter()
        # BENCH_PROFILE=out.txt runs the bridge under py-spy to see where its time goes;
        # BENCH_PROFILE_ARGS=--gil samples only the thread holding the GIL.
        prefix = []
        if profile := os.environ.get("BENCH_PROFILE"):
            rate = os.environ.get("BENCH_PROFILE_RATE", "200")  # samples per second
            prefix = ["py-spy", "record", "-o", profile, "-f", "raw", "-r", rate]
            prefix += [*os.environ.get("BENCH_PROFILE_ARGS", "").split(), "--"]
        procs = [start_bridge(config, prefix) for config in configs]
        try:
            # Start-up (imports, migrations) is reported apart: the plain client's
            # figure does not include its own.
            for port in ports:
                await wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, interval=0.005)
            startup_cpu = sum(cpu_seconds(p.pid) for p in procs)
            peak = 0.0
            while (count := await receiver_count(session, rec)) < args.events:
                peak = max([peak, *(peak_rss_mb(p.pid) for p in procs)])
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a bridge exited early")
                await asyncio.sleep(0.05)
            wall = time.perf_counter() - started
            peak = max([peak, *(peak_rss_mb(p.pid) for p in procs)])
            cpu = sum(cpu_seconds(p.pid) for p in procs)
            # The database's own backends (the bridge's pool, LISTEN and lease
            # connections), whole lives: other databases on the server don't count.
            server_cpu = await backends_cpu_seconds(store_url) if store_url else 0.0
            upstream = links = 0.0
            for port in ports:
                base = f"http://127.0.0.1:{port}"
                upstream += await metric_total(session, base, "bridge_upstream_requests_total{")
                # Video links of the events younger than video_links_max_age_s: one
                # GetVideoDetail each, on top of the list pages the budget counts.
                links += await metric_total(
                    session, base, "bridge_upstream_requests_total{", "GetVideoDetail"
                )
        finally:
            for p in procs:
                p.send_signal(2 if profile else 15)
            for p in procs:
                p.wait(30)
    # After a clean stop the WAL is checkpointed into the file.
    store_mb = sum(f.stat().st_size for f in tmp.glob("bridge.db*")) / 2**20
    return {
        "wall_s": wall,
        "delivered": count,
        "peak_rss_mb": peak,
        "upstream_requests": upstream - links,
        "video_link_fetches": links,
        "cpu_s": cpu,
        "startup_cpu_s": startup_cpu,
        "server_cpu_s": server_cpu,
        "store_mb": store_mb,
    }


async def plain_bodies(sim_url: str, n: int) -> list[tuple[str, str]]:
    """N bodies of the bridge's own shape: simulator items through the bridge's normalize."""
    async with aiohttp.ClientSession() as session:
        url = f"{sim_url}/V2/events?since=0&until={int(time.time())}&limit=100&offset=0"
        async with session.get(
            url, headers={"X-Api-Key": "sim-key", "Authorization": "Bearer sim-token"}
        ) as resp:
            items = (await resp.json())["data"]
    table = EventTypeTable()
    bodies = []
    for i in range(n):
        ev = normalize_event({**items[i % len(items)], "ticket": f"t-{i}"}, table)
        data = event_data_with_revision(ev.data, 1, [])
        built = build_notification("event.created", data, base_url=sim_url, now=time.time())
        bodies.append((built.id, built.body))
    return bodies


async def run_plain(
    bodies: list[tuple[str, str]], hook: str, rec: str, concurrency: int
) -> tuple[float, float]:
    """N signed POSTs with the same concurrency: the ceiling of this machine."""
    async with aiohttp.ClientSession() as session:
        await session.post(f"{rec}/reset")
        started, cpu = time.perf_counter(), time.process_time()
        await post_signed(session, hook, bodies, concurrency)
        return time.perf_counter() - started, time.process_time() - cpu


def main(args: argparse.Namespace) -> None:
    sim_port, rec_port = free_port(), free_port()
    sim, rec_proc = start_simulator(sim_port, args.events, args.devices), start_receiver(rec_port)
    sim_url, rec = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{rec_port}"
    hook = f"{rec}/hook"

    async def bridge_run() -> tuple[dict[str, float], float, list[tuple[str, str]]]:
        await wait_http(f"{sim_url}/V2/events")
        await wait_http(f"{rec}/count")
        sim_cpu_before = cpu_seconds(sim.pid)
        bridge = await run_bridge(args, sim_url, hook, rec)
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu_before
        return bridge, sim_cpu, await plain_bodies(sim_url, args.events)

    try:
        bridge, sim_cpu, bodies = asyncio.run(bridge_run())
        # The ceiling with the stock asyncio loop (what a plain aiohttp client is), and
        # with uvloop (what the bridge runs on), each on a fresh loop.
        plain = {}
        for kind in ("asyncio", "uvloop"):
            loop = new_loop(kind)
            try:
                plain[kind] = loop.run_until_complete(
                    run_plain(bodies, hook, rec, args.concurrency)
                )
            finally:
                loop.close()
    finally:
        stop(sim, rec_proc)
    n = args.events
    bridge_rate = n / bridge["wall_s"]
    plain_s, plain_cpu = plain["asyncio"]
    uv_s, uv_cpu = plain["uvloop"]
    windows = math.ceil((25 * 3600 + 900) / 3600)
    budget = 1.05 * math.ceil(n / args.page_size) + windows
    bridge_cpu_us = bridge["cpu_s"] / n * 1e6
    drain_cpu_us = (bridge["cpu_s"] - bridge["startup_cpu_s"]) / n * 1e6
    result = {
        "events": n,
        "store": "postgresql" if args.store else "sqlite",
        "replicas": args.replicas,
        "bridge_loop": os.environ.get("BENCH_BRIDGE_LOOP", "uvloop"),
        "devices": args.devices,
        "concurrency": args.concurrency,
        "bridge_wall_s": round(bridge["wall_s"], 2),
        "bridge_notifications_per_s": round(bridge_rate),
        "bridge_peak_rss_mb": round(bridge["peak_rss_mb"], 1),
        "store_mb_per_1000": None if args.store else round(bridge["store_mb"] / n * 1000, 3),
        "upstream_requests": int(bridge["upstream_requests"]),
        "upstream_request_budget": int(budget),
        "video_link_fetches": int(bridge["video_link_fetches"]),
        "bridge_startup_cpu_s": round(bridge["startup_cpu_s"], 2),
        "bridge_cpu_us_per_notification": round(bridge_cpu_us),
        "bridge_drain_cpu_us_per_notification": round(drain_cpu_us),
        # The database server's CPU (PostgreSQL on this machine): the backends of the
        # bridge's connections; the WAL writer and checkpointer are not counted.
        "postgres_backends_cpu_us_per_notification": (
            round(bridge["server_cpu_s"] / n * 1e6) if args.store else None
        ),
        "simulator_cpu_us_per_event": round(sim_cpu / n * 1e6),
        "plain_client_wall_s": round(plain_s, 2),
        "plain_client_cpu_us_per_request": round(plain_cpu / n * 1e6),
        "plain_client_per_s": round(n / plain_s),
        "plain_client_uvloop_cpu_us_per_request": round(uv_cpu / n * 1e6),
        "plain_client_uvloop_per_s": round(n / uv_s),
        "ratio_to_ceiling": round(bridge_rate / (n / plain_s), 3),
        "cpu_ratio_to_plain_client": round(bridge_cpu_us / (plain_cpu / n * 1e6), 2),
        "drain_cpu_ratio_to_plain_client": round(drain_cpu_us / (plain_cpu / n * 1e6), 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--devices", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--page-size", type=int, default=100)
    p.add_argument("--max-rps", type=float, default=200.0)
    p.add_argument("--store", default=None, help="postgresql://… server (default: SQLite)")
    p.add_argument("--replicas", type=int, default=1, help="bridge processes (PostgreSQL)")
    parsed = p.parse_args()
    if parsed.replicas > 1 and not parsed.store:
        p.error("--replicas > 1 needs --store postgresql://…")
    main(parsed)
