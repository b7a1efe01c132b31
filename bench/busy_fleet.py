"""Busy-fleet soak: a fleet sending 20 events/s, polled with the defaults and `interval_s: 5`.

Prints, per minute: upstream requests (all endpoints, and `/V2/events` alone), the
number of poll runs and their duration (mean, max), runs the scheduler had to skip,
and the delivery latency of the events that arrived in that minute (p50 and p99, from
the moment the event became visible at the vendor to its arrival at the receiver),
on-time events apart from late ones (10% of the simulator's events carry a timestamp
1-10 minutes in the past: only the re-scan of `lookback_s` finds those).

    .venv/bin/python bench/busy_fleet.py [--rate 20] [--devices 300] [--minutes 4]

Before the bridge starts, the simulator is given a full `lookback_s` window of events
(`--preload-s`, default 900 s at the same rate), so the run starts in the steady state
a 15-minute soak reaches (every re-scan reads a full window) instead of ramping up to
it; preloaded events are delivered by the first re-scan and left out of the latency
figures. The first minute therefore also shows that catch-up.

Everything runs in this process on loopback (simulator, bridge, receiver) on the real
clock, so the run takes `--minutes` of wall time. The bridge's logs are captured, not
printed. Works against any revision of the bridge: it only sets long-standing keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from bridge.app import build_app
from bridge.clock import SystemClock
from bridge.settings import settings_from_dict
from bridge.simulator import Simulator, SimulatorConfig


@dataclass
class Receipts:
    """What the receiver saw: (ticket, monotonic arrival) of each event.created."""

    created: list[tuple[str, float]] = field(default_factory=list)

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            body = await request.json()
            if body.get("type") == "event.created":
                self.created.append((body["data"]["ticket"], time.time()))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app


class SkippedRuns(logging.Handler):
    """Counts APScheduler's "maximum number of running instances reached" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "maximum number of running instances" in record.getMessage():
            self.times.append(time.time())


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sim = Simulator(
        SimulatorConfig(seed=args.seed, devices=args.devices, rate=args.rate),
        clock=SystemClock(),
    )
    start = time.time()
    preload = int(args.rate * args.preload_s)
    for i in range(preload):
        sim.add_event(timestamp=int(start - args.preload_s + i / args.rate), video=False)
    preloaded = {e.item["ticket"] for e in sim.events}
    receipts = Receipts()
    sim_runner, sim_port = await serve(sim.app())
    rec_runner, rec_port = await serve(receipts.app())
    skipped = SkippedRuns()
    logging.getLogger("apscheduler").addHandler(skipped)
    tmp = tempfile.TemporaryDirectory(prefix="busy-fleet-")
    settings = settings_from_dict(
        {
            "upstream": {
                "base_url": f"http://127.0.0.1:{sim_port}",
                "api_key": "sim-key",
                "auth": {"token": "sim-token"},
            },
            "poll": {"events": {"interval_s": args.interval, "start_from": "now"}},
            "store": {"url": f"sqlite:///{Path(tmp.name) / 'bridge.db'}"},
            "logging": {"format": "json"},
            "targets": [
                {"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{rec_port}/hook"}
            ],
        },
        {},
    )
    runs: list[tuple[float, float]] = []

    def collect(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        # Keep the canonical poll lines (with when they were logged), print nothing.
        if event.get("event") == "poll run" and event.get("job") == "events":
            runs.append((time.time(), float(event["duration_s"])))
        raise structlog.DropEvent

    structlog.configure(processors=[collect])
    began = time.time()
    bridge_runner, _ = await serve(build_app(settings))
    try:
        await asyncio.sleep(args.minutes * 60)
    finally:
        await bridge_runner.cleanup()
    await rec_runner.cleanup()
    await sim_runner.cleanup()
    tmp.cleanup()

    arrivals = {e.item["ticket"]: (e.arrived_at, e.item["timestamp"]) for e in sim.events}
    minutes: list[dict[str, Any]] = []
    for m in range(args.minutes):
        lo, hi = began + 60 * m, began + 60 * (m + 1)
        requests = [r for r in sim.requests if lo <= r.time < hi]
        on_time: list[float] = []
        late: list[float] = []
        for ticket, at in receipts.created:
            if ticket in preloaded or ticket not in arrivals:
                continue
            arrived, stamp = arrivals[ticket]
            if lo <= arrived < hi:
                (late if arrived - stamp > 30 else on_time).append(at - arrived)
        durations = [d for t, d in runs if lo <= t < hi]
        minutes.append(
            {
                "minute": m + 1,
                "upstream_requests": len(requests),
                "events_requests": sum(1 for r in requests if r.path == "/V2/events"),
                "poll_runs": len(durations),
                "poll_s_mean": round(statistics.fmean(durations), 2) if durations else None,
                "poll_s_max": round(max(durations), 2) if durations else None,
                "skipped_runs": sum(1 for t in skipped.times if lo <= t < hi),
                "on_time_p50_s": pct(on_time, 0.5),
                "on_time_p99_s": pct(on_time, 0.99),
                "late_p50_s": pct(late, 0.5),
                "late_p99_s": pct(late, 0.99),
                "delivered": len(on_time) + len(late),
            }
        )
    # On-time events that arrived with a minute left must all be there; late ones
    # wait for the next sweep, so only those that arrived 4 minutes before the end.
    got = {t for t, _ in receipts.created}
    end = began + 60 * args.minutes

    def missing(late: bool, margin_s: float) -> int:
        return sum(
            1
            for t, (arrived, stamp) in arrivals.items()
            if t not in preloaded
            and t not in got
            and (arrived - stamp > 30) == late
            and arrived < end - margin_s
        )

    return {
        "rate": args.rate,
        "devices": args.devices,
        "interval_s": args.interval,
        "preloaded": preload,
        "budget_requests_per_min": 5 * 60,
        "minutes": minutes,
        "missing_on_time": missing(False, 60),
        "missing_late": missing(True, 240),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="new events per second")
    parser.add_argument("--devices", type=int, default=300)
    parser.add_argument("--interval", type=float, default=5.0, help="poll.events.interval_s")
    parser.add_argument("--minutes", type=int, default=4, help="wall-clock length of the run")
    parser.add_argument("--preload-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    header = (
        "min  req/min  events/min  runs  poll_mean  poll_max  skipped"
        "  on-time p50/p99 s   late p50/p99 s  delivered"
    )
    print(header)
    for m in result["minutes"]:
        print(
            f"{m['minute']:>3}  {m['upstream_requests']:>7}  {m['events_requests']:>10}"
            f"  {m['poll_runs']:>4}  {m['poll_s_mean']!s:>9}  {m['poll_s_max']!s:>8}"
            f"  {m['skipped_runs']:>7}  {m['on_time_p50_s']!s:>7}/{m['on_time_p99_s']!s:<9}"
            f"  {m['late_p50_s']!s:>6}/{m['late_p99_s']!s:<8}  {m['delivered']:>9}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
