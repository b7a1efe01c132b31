"""Memory under an HTTP flood: the figure the chart's memory limit is sized from.

The bridge (vendor push enabled, one console target, SQLite) is run as its own process;
this script opens more connections than `server.max_connections` and, on each, posts
vendor pushes padded to near the 1 MiB push limit, as fast as the bridge takes them.
It prints the bridge's peak RSS (VmHWM), how the pushes were answered, and how many
connections were refused by the cap.

    python bench/http_flood.py [--connections 96] [--pushes 2000] [--pad-kib 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from backlog import free_port, peak_rss_mb, wait_http

TOKEN = "bench-push-token-0123"


def push_body(pad_kib: int) -> bytes:
    """An EVENT_TRIGGERED push for a new ticket, its message padded by an unknown field."""
    message = {
        "device_sn": "SN0001",
        "device_cid": str(uuid.uuid4()),
        "timestamp": int(time.time()) - 5,
        "event_type": 1,
        "event_name": "Impact",
        "ticket": str(uuid.uuid4()),
        "severity_level": "Severe",
        "pad": "x" * (pad_kib * 1024),
    }
    body = {"hookName": "EVENT_TRIGGERED", "message": json.dumps(message)}
    return json.dumps(body).encode()


async def flood(args: argparse.Namespace, url: str) -> dict[str, int]:
    statuses: dict[str, int] = {}
    left = args.pushes
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                async with session.post(
                    url,
                    data=push_body(args.pad_kib),
                    headers={"X-Bridge-Token": TOKEN, "Content-Type": "application/json"},
                ) as resp:
                    await resp.read()
                    key = str(resp.status)
            except aiohttp.ClientError as err:
                key = type(err).__name__
            statuses[key] = statuses.get(key, 0) + 1

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(args.connections)))
    return statuses


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    port = free_port()
    cfg = {
        # No vendor: polls fail (and stay out of the way); pushes are what is measured.
        "upstream": {
            "base_url": "http://127.0.0.1:9",
            "api_key": "k-1234",
            "auth": {"token": "t-1234"},
        },
        "poll": {"events": {"interval_s": 3600}},
        "ingest": {"vendor_webhook": {"enabled": True, "token": TOKEN}},
        "store": {"url": f"sqlite:///{tmp / 'bridge.db'}"},
        "server": {"host": "127.0.0.1", "port": port},
        "logging": {"format": "json", "level": "error"},
        "targets": [{"name": "out", "type": "console"}],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(tmp / "config.yaml")],
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        idle = peak_rss_mb(proc.pid)
        started = time.perf_counter()
        task = asyncio.create_task(flood(args, f"http://127.0.0.1:{port}/ingest/visionmax"))
        peak = idle
        while not task.done():
            peak = max(peak, peak_rss_mb(proc.pid))
            await asyncio.sleep(0.02)
        statuses = task.result()
        wall = time.perf_counter() - started
        peak = max(peak, peak_rss_mb(proc.pid))
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "connections": args.connections,
        "pushes": args.pushes,
        "push_kib": args.pad_kib,
        "wall_s": round(wall, 2),
        "answers": statuses,
        "bridge_rss_after_start_mb": round(idle, 1),
        "bridge_peak_rss_mb": round(peak, 1),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=96)
    p.add_argument("--pushes", type=int, default=2000)
    p.add_argument("--pad-kib", type=int, default=1000)
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))
