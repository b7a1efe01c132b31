"""`fleet-bridge simulate`: serve the simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from aiohttp import web

from bridge.simulator.config import SimulatorConfig
from bridge.simulator.core import Simulator


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve on host:port, print the URL and credentials once, stop on SIGINT/SIGTERM."""
    sim = Simulator(config)
    runner = web.AppRunner(sim.app(), handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1] if runner.addresses else port
        print(
            f"simulator listening on http://{host}:{bound_port} "
            f"api_key={config.api_key} token={config.token} password={config.password} "
            f"(headers {config.api_key_header}, {config.auth_header}: {config.auth_scheme})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available on every platform (e.g. Windows); Ctrl-C still ends asyncio.run.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
