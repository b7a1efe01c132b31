"""Backlog benchmark: the bridge from a cold start drains N simulated events to a webhook.

Prints wall time to the last delivery, notifications/s, upstream requests (list pages;
GetVideoDetail calls for the recent events' video links apart), the bridge's
peak RSS, and — in the same run, against the same receiver — the ceiling of a plain
aiohttp client posting N signed bodies with the same concurrency, and the ratio.

    python bench/backlog.py [--events 50000] [--devices 500] [--concurrency 8]
    python bench/backlog.py --store postgresql://postgres@127.0.0.1:5432/postgres [--replicas 3]

With `--store postgresql://…` the run uses a throwaway database created on that
server (dropped afterwards); `--replicas N` starts N bridge processes on it (peak RSS
is the largest replica's, CPU the sum).

Everything runs on loopback: the simulator, the receiver and the bridge are separate
processes; this script only orchestrates and runs the plain client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import yaml

from bridge.notifications import build_notification
from bridge.targets.webhook import sign

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def receiver_count(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/count") as resp:
        return int((await resp.json())["count"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


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
    store_url = f"sqlite:///{tmp / 'bridge.db'}"
    if args.store:
        store_url = await throwaway_database(args.store)
    try:
        return await _run_bridge(args, sim_url, hook, rec, tmp, store_url)
    finally:
        if args.store:
            await drop_database(args.store, store_url)


async def _run_bridge(
    args: argparse.Namespace, sim_url: str, hook: str, rec: str, tmp: Path, store_url: str
) -> dict[str, float]:
    ports = [free_port() for _ in range(args.replicas)]
    cfg = {
        "upstream": {
            "base_url": sim_url,
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "page_size": args.page_size,
            "max_requests_per_s": args.max_rps,
        },
        "poll": {"events": {"interval_s": 30, "start_from": "25h", "max_window_s": 3600}},
        "store": {"url": store_url},
        "server": {"host": "127.0.0.1", "port": ports[0]},
        "logging": {"format": "json", "level": os.environ.get("BENCH_LOG_LEVEL", "warning")},
        "targets": [
            {
                "name": "bench",
                "type": "webhook",
                "url": hook,
                "secret": SECRET,
                "max_in_flight": args.concurrency,
            }
        ],
    }
    configs = []
    for port in ports:
        path = tmp / f"config-{port}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "server": {"host": "127.0.0.1", "port": port}}))
        configs.append(path)
    async with aiohttp.ClientSession() as session:
        await session.post(f"{rec}/reset")
        started = time.perf_counter()
        # BENCH_PROFILE=out.txt runs the bridge under py-spy to see where its time goes.
        prefix = []
        if profile := os.environ.get("BENCH_PROFILE"):
            prefix = ["py-spy", "record", "-o", profile, "-f", "raw", "-r", "200", "--"]
        procs = [
            subprocess.Popen(
                [*prefix, sys.executable, "-m", "bridge", "run", "--config", str(path)],
                stdout=subprocess.DEVNULL,
            )
            for path in configs
        ]
        metrics = ""
        try:
            peak = 0.0
            while (count := await receiver_count(session, rec)) < args.events:
                peak = max([peak, *(peak_rss_mb(p.pid) for p in procs)])
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError("a bridge exited early")
                await asyncio.sleep(0.05)
            wall = time.perf_counter() - started
            peak = max([peak, *(peak_rss_mb(p.pid) for p in procs)])
            cpu = sum(cpu_seconds(p.pid) for p in procs)
            for port in ports:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    metrics += await resp.text()
        finally:
            for p in procs:
                p.send_signal(2 if profile else 15)
            for p in procs:
                p.wait(30)
    requests = [
        line for line in metrics.splitlines() if line.startswith("bridge_upstream_requests_total{")
    ]
    upstream = sum(float(line.rsplit(" ", 1)[1]) for line in requests)
    # Video links of the events younger than video_links_max_age_s: one GetVideoDetail
    # each, on top of the list pages the budget below counts.
    links = sum(float(line.rsplit(" ", 1)[1]) for line in requests if "GetVideoDetail" in line)
    return {
        "wall_s": wall,
        "delivered": count,
        "peak_rss_mb": peak,
        "upstream_requests": upstream - links,
        "video_link_fetches": links,
        "cpu_s": cpu,
    }


async def run_plain(args: argparse.Namespace, hook: str, rec: str) -> tuple[float, float]:
    """N signed POSTs with the same concurrency: the ceiling of this machine."""
    bodies = []
    for i in range(args.events):
        n = build_notification(
            "event.created",
            {
                "ticket": f"t-{i}",
                "revision": 1,
                "changed": [],
                "severity": "minor",
                "device": {"cid": "d", "serial_number": None},
                "media": {"has_video": False},
            },
            base_url="http://sim",
            now=time.time(),
        )
        bodies.append((n.id, n.body))
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    secrets = [SECRET]

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            msg_id, body = queue.get_nowait()
            ts = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": sign(secrets, msg_id, ts, body),
            }
            async with session.post(hook, data=body.encode(), headers=headers) as resp:
                await resp.read()
                assert resp.status == 200

    async with aiohttp.ClientSession() as session:
        await session.post(f"{rec}/reset")
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(session) for _ in range(args.concurrency)))
        return time.perf_counter() - started, time.process_time() - cpu


async def main(args: argparse.Namespace) -> None:
    sim_port, rec_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "bridge", "simulate", "--port", str(sim_port), "--rate", "0",
         "--backlog", str(args.events), "--devices", str(args.devices), "--seed", "1"],
        stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    rec_proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "receiver.py"), str(rec_port)], env=env
    )
    sim_url, rec = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{rec_port}"
    hook = f"{rec}/hook"
    try:
        await wait_http(f"{sim_url}/V2/events")
        await wait_http(f"{rec}/count")
        sim_cpu_before = cpu_seconds(sim.pid)
        bridge = await run_bridge(args, sim_url, hook, rec)
        sim_cpu = cpu_seconds(sim.pid) - sim_cpu_before
        plain_s, plain_cpu = await run_plain(args, hook, rec)
    finally:
        for p in (sim, rec_proc):
            p.terminate()
            p.wait(10)
    n = args.events
    bridge_rate = n / bridge["wall_s"]
    plain_rate = n / plain_s
    windows = math.ceil((25 * 3600 + 900) / 3600)
    budget = 1.1 * math.ceil(n / args.page_size) + windows
    result = {
        "events": n,
        "store": "postgresql" if args.store else "sqlite",
        "replicas": args.replicas,
        "devices": args.devices,
        "concurrency": args.concurrency,
        "bridge_wall_s": round(bridge["wall_s"], 2),
        "bridge_notifications_per_s": round(bridge_rate),
        "bridge_peak_rss_mb": round(bridge["peak_rss_mb"], 1),
        "upstream_requests": int(bridge["upstream_requests"]),
        "upstream_request_budget": int(budget),
        "video_link_fetches": int(bridge["video_link_fetches"]),
        "bridge_cpu_us_per_notification": round(bridge["cpu_s"] / n * 1e6),
        "simulator_cpu_us_per_event": round(sim_cpu / n * 1e6),
        "plain_client_wall_s": round(plain_s, 2),
        "plain_client_cpu_us_per_request": round(plain_cpu / n * 1e6),
        "plain_client_per_s": round(plain_rate),
        "ratio_to_ceiling": round(bridge_rate / plain_rate, 3),
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
    asyncio.run(main(parsed))
