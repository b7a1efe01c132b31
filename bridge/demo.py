"""`fleet-bridge demo`: the simulator, the bridge (SQLite in a temp dir) and a console
target in one process, so a newcomer sees notifications flow with no credentials."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from bridge.aio import wait_at_most
from bridge.app import build_app
from bridge.cli import EXIT_OK
from bridge.logs import configure_logging
from bridge.settings import Settings, settings_from_dict
from bridge.simulator import Simulator, SimulatorConfig


def demo_settings(sim_url: str, db_path: Path) -> Settings:
    """The demo's config: the simulator upstream, a temp SQLite store, one console target."""
    return settings_from_dict(
        {
            "upstream": {
                "base_url": sim_url,
                "api_key": "sim-key",
                "auth": {"token": "sim-token"},
                "max_requests_per_s": 20,
            },
            "poll": {"events": {"interval_s": 2, "lookback_s": 900, "start_from": "30m"}},
            "store": {"url": f"sqlite:///{db_path}"},
            "server": {"host": "127.0.0.1", "port": 0},
            "logging": {"level": "info", "format": "console"},
            "targets": [{"name": "stdout", "type": "console"}],
        },
        {},
    )


async def _demo(duration: float | None) -> None:
    sim = Simulator(SimulatorConfig(devices=8, rate=1.0, backlog=0, seed=None))
    # A little history so the first poll has something to show at once.
    for _ in range(5):
        sim.add_event()
    sim_runner = web.AppRunner(sim.app(), access_log=None)
    await sim_runner.setup()
    site = web.TCPSite(sim_runner, "127.0.0.1", 0)
    await site.start()
    port = sim_runner.addresses[0][1]
    with tempfile.TemporaryDirectory(prefix="fleet-bridge-demo-") as tmp:
        settings = demo_settings(f"http://127.0.0.1:{port}", Path(tmp) / "bridge.db")
        configure_logging("info", "console", settings.secret_values())
        print(
            f"demo: simulator on http://127.0.0.1:{port}, store in {tmp}; "
            "notifications follow as JSON lines (Ctrl-C to stop)",
            file=sys.stderr,
        )
        runner = web.AppRunner(build_app(settings), access_log=None)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await wait_at_most(duration, stop.wait())
        finally:
            await runner.cleanup()
            await sim_runner.cleanup()


def run_demo(duration: float | None = None) -> int:
    """Run the demo until Ctrl-C or `duration` seconds."""
    asyncio.run(_demo(duration))
    return EXIT_OK
