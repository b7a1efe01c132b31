"""Helpers shared by the benchmarks: ports, processes, CPU and memory readings.

Every benchmark runs the simulator and the receiver as separate processes on
loopback, so the process being measured pays only for its own work.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from bridge.targets.webhook import sign

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout: float = 60, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(interval)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def start_simulator(
    port: int, backlog: int, devices: int = 500, *extra: str
) -> subprocess.Popen[bytes]:
    """`fleet-bridge simulate` preloaded with `backlog` events over 24 h."""
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "simulate", "--port", str(port), "--rate", "0",
         "--backlog", str(backlog), "--devices", str(devices), "--seed", "1", *extra],
        stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    """bench/receiver.py: answers 200 at once and counts."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "receiver.py"), str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(10)


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    """`asyncio` or `uvloop`, as the benchmark's --loop says."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def write_bridge_config(
    tmp: Path,
    sim_url: str,
    hook: str,
    *,
    port: int,
    events: dict[str, object],
    page_size: int = 100,
    max_rps: float = 200.0,
    concurrency: int = 8,
    store_url: str | None = None,
) -> Path:
    """A bridge config: SQLite in `tmp` (or `store_url`), one webhook target, the events
    poll as given; written to `tmp/config-<port>.yaml`."""
    import yaml

    cfg = {
        "upstream": {
            "base_url": sim_url,
            "api_key": "sim-key",
            "auth": {"token": "sim-token"},
            "page_size": page_size,
            "max_requests_per_s": max_rps,
        },
        "poll": {"events": events},
        "store": {"url": store_url or f"sqlite:///{tmp / 'bridge.db'}"},
        "server": {"host": "127.0.0.1", "port": port},
        "logging": {"format": "json", "level": os.environ.get("BENCH_LOG_LEVEL", "warning")},
        "targets": [
            {
                "name": "bench",
                "type": "webhook",
                "url": hook,
                "secret": SECRET,
                "max_in_flight": concurrency,
            }
        ],
    }
    path = tmp / f"config-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_bridge(config: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`fleet-bridge run` (optionally under a profiler given as `prefix`)."""
    command = [sys.executable, "-m", "bridge", "run", "--config", str(config)]
    if os.environ.get("BENCH_BRIDGE_LOOP") == "asyncio":
        # The bridge as it runs where uvloop is not installed (its import fails).
        command[1:3] = [
            "-c",
            "import sys; sys.modules['uvloop'] = None; from bridge.cli import main; "
            "sys.exit(main(sys.argv[1:]))",
        ]
    return subprocess.Popen([*(prefix or []), *command], stdout=subprocess.DEVNULL)


async def metric_total(
    session: aiohttp.ClientSession, base: str, name: str, has: str = ""
) -> float:
    """The sum of a metric's samples (those whose line contains `has`) from /metrics."""
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and has in line and not line.startswith("#")
    )


async def receiver_count(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/count") as resp:
        return int((await resp.json())["count"])


async def post_signed(
    session: aiohttp.ClientSession, hook: str, bodies: list[tuple[str, str]], concurrency: int
) -> None:
    """The plain-client ceiling: sign and POST each (id, body), `concurrency` at a time."""
    queue = list(reversed(bodies))
    secrets = [SECRET]

    async def worker() -> None:
        while queue:
            msg_id, body = queue.pop()
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

    await asyncio.gather(*(worker() for _ in range(concurrency)))
