"""Push latency benchmark: vendor push → bridge → signed webhook at the receiver.

Posts vendor-style `EVENT_TRIGGERED` bodies (each a new ticket) to the bridge's push
endpoint at a steady rate and measures, per push, the time from the start of the
push request to the webhook's arrival at the receiver (p50/p99/max), plus how fast
the push endpoint itself answers. Prints one JSON object.

    python bench/push_latency.py [--rate 50] [--duration 20]

The simulator (upstream, polled rarely) and the bridge run as separate processes on
loopback; this process posts the pushes and runs the receiver, so both timestamps
come from one monotonic clock. The cost per push is its store transaction; dispatch
outcomes are batched but sends are not delayed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SECRET, free_port, wait_http

TOKEN = "bench-push-token"


def push_body(ticket: str, now: int) -> dict[str, Any]:
    message = {
        "device_sn": "SN-BENCH-1",
        "device_cid": "cid-bench-1",
        "gps": {"lng": "121.374111", "lat": "25.047111", "alt": "0.0", "speed": "42.0"},
        "timestamp": now,
        "event_type": 4,
        "event_name": "Harsh Braking",
        "ticket": ticket,
        "severity_level": "Severe",
        "snapshots": {"count": 2, "capture_mode": ["C_F", "C_I"]},
        "video": {"count": 0, "capture_mode": []},
    }
    return {
        "type": "Notification",
        "hookName": "EVENT_TRIGGERED",
        "messageId": str(uuid.uuid4()),
        "message": json.dumps(message, separators=(",", ":")),
        "signature": "bench",
        "kid": "bench",
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(pct(values, 50) * 1000, 2),
        "p90": round(pct(values, 90) * 1000, 2),
        "p99": round(pct(values, 99) * 1000, 2),
        "max": round(max(values) * 1000, 2),
        "mean": round(statistics.fmean(values) * 1000, 2),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sim_port, bridge_port, rec_port = free_port(), free_port(), free_port()
    received: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        received.setdefault(body["data"]["ticket"], time.monotonic())
        return web.Response(status=200)

    rec_app = web.Application()
    rec_app.router.add_post("/hook", hook)
    runner = web.AppRunner(rec_app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec_port).start()

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen(
        [sys.executable, "-m", "bridge", "simulate", "--port", str(sim_port), "--rate", "0"],
        stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="push-bench-"))
    cfg = {
        "upstream": {
            "base_url": f"http://127.0.0.1:{sim_port}",
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "max_requests_per_s": 50,
        },
        "poll": {"events": {"interval_s": 3600, "start_from": "now"}},
        "ingest": {"vendor_webhook": {"enabled": True, "token": TOKEN}},
        "store": {"url": f"sqlite:///{tmp / 'bridge.db'}"},
        "server": {"host": "127.0.0.1", "port": bridge_port},
        "logging": {"format": "json", "level": "warning"},
        "targets": [
            {
                "name": "bench",
                "type": "webhook",
                "url": f"http://127.0.0.1:{rec_port}/hook",
                "secret": SECRET,
            }
        ],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    bridge = None
    sent: dict[str, float] = {}
    answered: list[float] = []
    statuses: dict[int, int] = {}
    try:
        await wait_http(f"http://127.0.0.1:{sim_port}/V2/events")
        bridge = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(tmp / "config.yaml")],
            stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        await wait_http(f"http://127.0.0.1:{bridge_port}/healthz")
        url = f"http://127.0.0.1:{bridge_port}/ingest/visionmax"
        async with aiohttp.ClientSession(headers={"X-Bridge-Token": TOKEN}) as session:

            async def post(ticket: str) -> None:
                body = push_body(ticket, int(time.time()))
                started = time.monotonic()
                sent[ticket] = started
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                answered.append(time.monotonic() - started)

            # Warm-up (connections, first transaction), not measured.
            for _ in range(5):
                await post(f"warmup-{uuid.uuid4()}")
            sent.clear()
            answered.clear()
            total = int(args.rate * args.duration)
            t0 = time.monotonic()
            tasks = []
            for i in range(total):
                delay = t0 + i / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(str(uuid.uuid4()))))
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + 30
            while any(t not in received for t in sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(30)
        sim.terminate()
        sim.wait(10)
        await runner.cleanup()
    latencies = [received[t] - s for t, s in sent.items() if t in received]
    return {
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "pushes": len(sent),
        "delivered": len(latencies),
        "push_statuses": statuses,
        "push_to_webhook_ms": summary_ms(latencies),
        "push_answer_ms": summary_ms(answered),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=20.0)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
